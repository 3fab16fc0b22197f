"""The server's own Prometheus metrics, named and bucketed by Prometheus conventions.

    purifier_stage_duration_seconds        histogram  stage = decode | purify | classify | certify, per batch
    purifier_request_duration_seconds      histogram  handler time of the batch each request rode in
    purifier_batch_size                    histogram  images per handled batch
    purifier_images_total                  counter    images answered
    purifier_rejected_inputs_total         counter    reason = empty | not_an_image | corrupt | ...
    purifier_changed_predictions_total     counter    purification changed the prediction: the
                                                      "attack suspected" signal to alert on
    purifier_certified_total               counter    images answered with a certificate (certify=true)
    purifier_certify_abstentions_total     counter    of those, where the smoothed classifier abstained
    purifier_model_info                    gauge      1, with bundle, bundle_sha256 and mode labels
    purifier_inflight_requests             gauge      requests the handler is working on (what a stop drains)

Every series carries ``model``. Latency bucket edges are powers of 2^(1/4) seconds from 61 µs to
8 s: consecutive edges differ by 19%, so a quantile that Prometheus interpolates inside a bucket
is off by less than 19% of the true value anywhere in that range (TorchServe's fixed edges,
0.005 … 10, resolved nothing under 5 ms). Under TorchServe the workers write these through
prometheus_client's multiprocess mode ($PROMETHEUS_MULTIPROC_DIR) and serving.sidecar serves them;
in one process they live in ``ServingMetrics.registry``.
"""

from __future__ import annotations

import hashlib
import json
from contextlib import contextmanager

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from purifier.bundle import Bundle

LATENCY_BUCKETS = tuple(2 ** (k / 4) for k in range(-56, 13))  # 2^-14 s = 61 µs … 2^3 s = 8 s
BATCH_BUCKETS = (1, 2, 4, 8, 16, 24, 32, 48, 64, 128, 256)


def bundle_sha256(bundle: Bundle) -> str:
    """One hash of everything the bundle serves: sha256 over its files' sha256 values."""
    return hashlib.sha256(json.dumps(bundle.manifest["files"], sort_keys=True).encode()).hexdigest()


class MetricFamilies:
    """The metrics above, registered once in ``registry`` (one per process: every served model shares them)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = reg = registry or CollectorRegistry()
        labels = ["model"]
        self.stage = Histogram("purifier_stage_duration_seconds", "Seconds one pipeline stage took for one batch", labels + ["stage"],
                               buckets=LATENCY_BUCKETS, registry=reg)
        self.request = Histogram("purifier_request_duration_seconds", "Seconds the handler spent on the batch a request rode in",
                                 labels, buckets=LATENCY_BUCKETS, registry=reg)
        self.batch = Histogram("purifier_batch_size", "Images per handled batch", labels, buckets=BATCH_BUCKETS, registry=reg)
        self.images = Counter("purifier_images", "Images answered", labels, registry=reg)
        self.rejected = Counter("purifier_rejected_inputs", "Requests refused as unreadable, by reason", labels + ["reason"], registry=reg)
        self.changed = Counter("purifier_changed_predictions", "Images whose prediction purification changed (attack suspected)",
                               labels, registry=reg)
        self.certified = Counter("purifier_certified", "Images answered with a certificate", labels, registry=reg)
        self.abstained = Counter("purifier_certify_abstentions", "Certified images where the smoothed classifier abstained",
                                 labels, registry=reg)
        self.inflight = Gauge("purifier_inflight_requests", "Requests the handler is working on", labels, registry=reg,
                              multiprocess_mode="livesum")
        self.info = Gauge("purifier_model_info", "The served bundle (always 1)", labels + ["bundle", "bundle_sha256", "mode"],
                          registry=reg, multiprocess_mode="max")


class ServingMetrics:
    """The metrics of one served model (``families`` shared by the models of one process; new ones by default)."""

    def __init__(self, model_name: str, families: MetricFamilies | None = None) -> None:
        self.families = families or MetricFamilies()
        self.registry = self.families.registry
        self.model = model_name

    @contextmanager
    def in_flight(self, requests: int):
        """Count ``requests`` as being handled while the block runs."""
        gauge = self.families.inflight.labels(self.model)
        gauge.inc(requests)
        try:
            yield
        finally:
            gauge.dec(requests)

    def model_info(self, bundle: Bundle, mode: str) -> None:
        self.families.info.labels(self.model, bundle.name, bundle_sha256(bundle), mode).set(1)

    def stage(self, stage: str, seconds: float) -> None:
        self.families.stage.labels(self.model, stage).observe(seconds)

    def requests(self, count: int, seconds: float) -> None:
        """``count`` requests were answered by a batch that took ``seconds`` in the handler."""
        histogram = self.families.request.labels(self.model)
        for _ in range(count):
            histogram.observe(seconds)

    def batch(self, images: int, changed: int) -> None:
        self.families.batch.labels(self.model).observe(images)
        self.families.images.labels(self.model).inc(images)
        if changed:
            self.families.changed.labels(self.model).inc(changed)

    def certified(self, certificates: list) -> None:
        self.families.certified.labels(self.model).inc(len(certificates))
        abstained = sum(c.prediction is None for c in certificates)
        if abstained:
            self.families.abstained.labels(self.model).inc(abstained)

    def rejected(self, reason: str) -> None:
        self.families.rejected.labels(self.model, reason).inc()
