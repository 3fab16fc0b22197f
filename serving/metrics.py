"""The server's own Prometheus metrics: declared for TorchServe, emitted by the handler.

TorchServe (``metrics_mode=prometheus``) only exports model metrics its metrics config
declares, so ``metrics_config`` writes TorchServe's default config plus the entries below, and
``ServingMetrics`` emits them through the worker's metrics cache (the same declarations):

    PurifierStageLatency        histogram  ms     Stage = decode | purify | classify
    PurifierBatchSize           histogram  count  images per handled batch
    PurifierRejectedInputs      counter    count  Reason = empty | not_an_image | corrupt | ...
    PurifierChangedPredictions  counter    count  purification changed the prediction: an
                                                  "attack suspected" signal to alert on
    PurifierImages              counter    count  images answered
    PurifierModelInfo           gauge      count  1, with Bundle, BundleSha256 and Mode labels
    PurifierCertified           counter    count  images answered with a certificate (certify=true)
    PurifierCertifyAbstentions  counter    count  of those, where the smoothed classifier abstained
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import yaml

from purifier.bundle import Bundle

COMMON = ("ModelName", "Level")


@dataclass(frozen=True)
class MetricSpec:
    name: str
    kind: str  # counter | gauge | histogram
    unit: str
    dimensions: tuple[str, ...] = COMMON


STAGE_LATENCY = MetricSpec("PurifierStageLatency", "histogram", "ms", COMMON + ("Stage",))
BATCH_SIZE = MetricSpec("PurifierBatchSize", "histogram", "count")
REJECTED = MetricSpec("PurifierRejectedInputs", "counter", "count", COMMON + ("Reason",))
CHANGED = MetricSpec("PurifierChangedPredictions", "counter", "count")
IMAGES = MetricSpec("PurifierImages", "counter", "count")
MODEL_INFO = MetricSpec("PurifierModelInfo", "gauge", "count", COMMON + ("Bundle", "BundleSha256", "Mode"))
CERTIFIED = MetricSpec("PurifierCertified", "counter", "count")
ABSTENTIONS = MetricSpec("PurifierCertifyAbstentions", "counter", "count")
METRICS = (STAGE_LATENCY, BATCH_SIZE, REJECTED, CHANGED, IMAGES, MODEL_INFO, CERTIFIED, ABSTENTIONS)


def bundle_sha256(bundle: Bundle) -> str:
    """One hash of everything the bundle serves: sha256 over its files' sha256 values."""
    return hashlib.sha256(json.dumps(bundle.manifest["files"], sort_keys=True).encode()).hexdigest()


def metrics_config(path: Path) -> Path:
    """Write TorchServe's default metrics config with our model metrics added; returns ``path``."""
    import ts

    config = yaml.safe_load((Path(ts.__file__).parent / "configs" / "metrics.yaml").read_text())
    model_metrics = config.setdefault("model_metrics", {})
    for spec in METRICS:
        model_metrics.setdefault(spec.kind, []).append({"name": spec.name, "unit": spec.unit, "dimensions": list(spec.dimensions)})
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


class ServingMetrics:
    """Emits the metrics above through a TorchServe worker's metrics cache (``context.metrics``)."""

    def __init__(self, cache, model_name: str) -> None:
        from ts.metrics.metric_type_enum import MetricTypes

        kinds = {"counter": MetricTypes.COUNTER, "gauge": MetricTypes.GAUGE, "histogram": MetricTypes.HISTOGRAM}
        self._metrics = {spec.name: cache.get_metric(spec.name, kinds[spec.kind]) for spec in METRICS}
        self._common = [model_name, "Model"]

    def _emit(self, spec: MetricSpec, value: float, *labels: str) -> None:
        self._metrics[spec.name].add_or_update(value, self._common + list(labels))

    def model_info(self, bundle: Bundle, mode: str) -> None:
        self._emit(MODEL_INFO, 1, bundle.name, bundle_sha256(bundle), mode)

    def stage(self, stage: str, milliseconds: float) -> None:
        self._emit(STAGE_LATENCY, milliseconds, stage)

    def batch(self, images: int, changed: int) -> None:
        self._emit(BATCH_SIZE, images)
        self._emit(IMAGES, images)
        if changed:
            self._emit(CHANGED, changed)

    def certified(self, certificates: list) -> None:
        self._emit(CERTIFIED, len(certificates))
        abstained = sum(c.prediction is None for c in certificates)
        if abstained:
            self._emit(ABSTENTIONS, abstained)

    def rejected(self, reason: str) -> None:
        self._emit(REJECTED, 1, reason)
