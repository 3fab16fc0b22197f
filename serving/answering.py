"""From request items to answers for one served model, whichever front carries them (TorchServe's handler,
the KServe front): parse each item, run the pipeline (or the purifier alone) once over the images of all
readable ones, certify where asked, record the metrics. An unreadable item gets its BadInputError as its
answer; the rest of the batch is served.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np

from purifier.errors import BadInputError
from serving.metrics import ServingMetrics
from serving.protocols import Request, format_purified, format_response, parse_request
from serving.service import CertifySettings, PurificationService

MODES = ("classify", "purify")


class Answerer:
    """One served model: ``mode`` classify (predictions) or purify (purified images only)."""

    def __init__(self, service: PurificationService, model_name: str, mode: str = "classify", metrics: ServingMetrics | None = None,
                 certify: CertifySettings = CertifySettings()) -> None:
        if mode not in MODES:
            raise ValueError(f"mode {mode!r} is not one of {MODES}")
        self.service, self.model_name, self.mode, self.certify = service, model_name, mode, certify
        self.metrics = metrics or ServingMetrics(model_name)
        self.metrics.model_info(service.bundle, mode)

    def answer(self, items: list[tuple[dict, dict[str, str]]]) -> list[tuple[Request, dict] | BadInputError]:
        """Each (request item, lower-cased HTTP headers) -> (its Request, the response body) or the BadInputError it raised."""
        with self.metrics.in_flight(len(items)), self._timed_requests(len(items)):
            began = time.perf_counter()
            answers: list = [None] * len(items)
            parsed = []
            for position, (item, headers) in enumerate(items):
                try:
                    parsed.append((position, parse_request(item, self.service.bundle.input_shape, headers)))
                except BadInputError as error:
                    answers[position] = self._rejected(error)
            self.metrics.stage("decode", time.perf_counter() - began)
            if parsed:
                self._answer_parsed(parsed, answers)
            return answers

    @contextmanager
    def _timed_requests(self, count: int) -> Iterator[None]:
        began = time.perf_counter()
        yield
        self.metrics.requests(count, time.perf_counter() - began)

    def _rejected(self, error: BadInputError) -> BadInputError:
        self.metrics.rejected(error.reason)
        return error

    def _answer_parsed(self, parsed: list[tuple[int, Request]], answers: list) -> None:
        images = np.concatenate([request.images for _, request in parsed])
        if self.mode == "purify":
            started = time.perf_counter()
            purified, outcome = self.service.purify(images), None
            self.metrics.stage("purify", time.perf_counter() - started)
            self.metrics.batch(len(images), 0)
        else:
            outcome = self.service.run(images)
            purified = outcome.purified
            self.metrics.stage("purify", outcome.purify_ms / 1000)
            self.metrics.stage("classify", outcome.classify_ms / 1000)
            self.metrics.batch(len(images), sum(p.purification_changed_prediction for p in outcome.predictions))
        offset = 0
        for position, request in parsed:
            span = slice(offset, offset + len(request.images))
            offset = span.stop
            if outcome is None:
                answers[position] = (request, format_purified(request, purified[span], self.model_name))
                continue
            try:
                certificates = self._certificates(request)
            except BadInputError as error:
                answers[position] = self._rejected(error)
                continue
            answers[position] = (request, format_response(request, outcome.predictions[span], purified[span], self.model_name,
                                                          self.service.bundle.class_names, certificates))

    def _certificates(self, request: Request) -> list | None:
        """Certificates for a request that asked certify=true (timed as the certify stage), else None."""
        if not request.certify:
            return None
        started = time.perf_counter()
        certificates = self.service.certify(request.images, self.certify)
        self.metrics.stage("certify", time.perf_counter() - started)
        self.metrics.certified(certificates)
        return certificates
