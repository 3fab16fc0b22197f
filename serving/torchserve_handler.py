"""TorchServe handler: a thin adapter from TorchServe's request batch to PurificationService.

Every request item of the (dynamically batched) batch is parsed by serving.protocols; the
images of all readable items are purified and classified in one call (the random transform is
drawn per image), and each item gets its own response: predictions (or purified images, for
the purify-only model), or a 400 with {"error", "reason"} for an item that cannot be read, while
the rest of the batch is served. Settings come from the archive's model-config YAML
(``handler: {seed, mode, runtime, certify}``; mode ``classify`` or ``purify``; certify: CertifySettings
for requests that ask ``certify=true``). A failure to load is logged as one
line starting with LOAD_FAILED, which `purifier serve` looks for to stop the server with that
reason instead of leaving it answering 503.
"""

import logging
import time

import numpy as np

from purifier.errors import BadInputError
from serving.metrics import ServingMetrics
from serving.protocols import (
    error_body,
    format_purified,
    format_response,
    parse_request,
)
from serving.service import CertifySettings, PurificationService

LOAD_FAILED = "PURIFIER_MODEL_LOAD_FAILED"
MODES = ("classify", "purify")


class PurifierHandler:
    def initialize(self, context) -> None:
        try:
            settings = (context.model_yaml_config or {}).get("handler") or {}
            self.mode = settings.get("mode", "classify")
            if self.mode not in MODES:
                raise ValueError(f"handler mode {self.mode!r} is not one of {MODES}")
            self.service = PurificationService.from_bundle(context.system_properties["model_dir"], runtime=settings.get("runtime", "onnxruntime"),
                                                           seed=settings.get("seed"))
            self.model_name = context.model_name
            self.certify = CertifySettings(**(settings.get("certify") or {}))
            self.metrics = ServingMetrics(context.model_name)
            self.metrics.model_info(self.service.bundle, self.mode)
        except Exception as error:
            logging.getLogger(__name__).error("%s %s: %s", LOAD_FAILED, type(error).__name__, str(error).splitlines()[0] if str(error) else "")
            raise
        self.initialized = True

    def handle(self, data, context):
        responses: list = [None] * len(data)
        began = time.perf_counter()
        parsed = []
        for position, item in enumerate(data):
            try:
                headers = {str(k).lower(): str(v) for k, v in (context.get_all_request_header(position) or {}).items()}
                parsed.append((position, parse_request(item, self.service.bundle.input_shape, headers)))
            except BadInputError as error:
                context.set_response_status(400, "Bad Request", idx=position)
                responses[position] = error_body(error)
                self.metrics.rejected(error.reason)
        self.metrics.stage("decode", time.perf_counter() - began)
        if parsed:
            images = np.concatenate([request.images for _, request in parsed])
            if self.mode == "purify":
                started = time.perf_counter()
                purified = self.service.purify(images)
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
                if self.mode == "purify":
                    responses[position] = format_purified(request, purified[span], self.model_name)
                    continue
                try:
                    certificates = self._certificates(request)
                except BadInputError as error:
                    context.set_response_status(400, "Bad Request", idx=position)
                    responses[position] = error_body(error)
                    self.metrics.rejected(error.reason)
                    continue
                responses[position] = format_response(request, outcome.predictions[span], purified[span], self.model_name,
                                                      self.service.bundle.class_names, certificates)
        self.metrics.requests(len(data), time.perf_counter() - began)
        return responses

    def _certificates(self, request) -> list | None:
        """Certificates for a request that asked certify=true (timed as the certify stage), else None."""
        if not request.certify:
            return None
        started = time.perf_counter()
        certificates = self.service.certify(request.images, self.certify)
        self.metrics.stage("certify", time.perf_counter() - started)
        self.metrics.certified(certificates)
        return certificates
