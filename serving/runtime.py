"""One interface over the engines that can run a bundle's pipeline.

``onnxruntime`` (default) runs the bundle's exported ONNX graphs on the CPU; ``torch`` runs
the PyTorch modules and is the reference. Asking for an engine that cannot run gives a
PurifierError that says why; there is no silent fallback.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np
import torch

from purifier.bundle import Bundle
from purifier.errors import PurifierError


class Runtime(ABC):
    """Runs f(g(t(x))) and f(x) on float32 NCHW batches; mask and noise come from the caller."""

    name: str

    @abstractmethod
    def pipeline(self, image: np.ndarray, mask: np.ndarray, noise: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(logits, purified) of the defended model."""

    @abstractmethod
    def classifier(self, image: np.ndarray) -> np.ndarray:
        """Logits of the bare classifier."""


class OnnxRuntime(Runtime):
    name = "onnxruntime"

    def __init__(self, bundle: Bundle, threads: int = 0) -> None:
        import onnxruntime

        graphs = (bundle.manifest.get("exports") or {}).get("onnx", {}).get("graphs", {})
        if "pipeline" not in graphs or "classifier" not in graphs:
            raise PurifierError(f"bundle {bundle.path} has no ONNX export; run 'purifier export {bundle.path}' first")
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL

        def session(stage: str):
            return onnxruntime.InferenceSession(str(bundle.file(graphs[stage]["file"])), options, providers=["CPUExecutionProvider"])

        self._pipeline, self._classifier = session("pipeline"), session("classifier")

    def pipeline(self, image, mask, noise):
        logits, purified = self._pipeline.run(None, {"image": image, "mask": mask, "noise": noise})
        return logits, purified

    def classifier(self, image):
        return self._classifier.run(None, {"image": image})[0]


class TorchRuntime(Runtime):
    name = "torch"

    def __init__(self, bundle: Bundle, threads: int = 0) -> None:
        if threads:
            torch.set_num_threads(threads)
        self._model = bundle.pipeline()

    @torch.no_grad()
    def pipeline(self, image, mask, noise):
        logits, purified = self._model.forward_with(*(torch.from_numpy(a) for a in (image, mask, noise)))
        return logits.numpy(), purified.numpy()

    @torch.no_grad()
    def classifier(self, image):
        return self._model.classifier(torch.from_numpy(image)).numpy()


RUNTIMES: dict[str, type[Runtime]] = {"onnxruntime": OnnxRuntime, "torch": TorchRuntime}


def create_runtime(bundle: Bundle, name: str = "onnxruntime", threads: int = 0) -> Runtime:
    if name not in RUNTIMES:
        raise PurifierError(f"unknown runtime {name!r}; available: {', '.join(RUNTIMES)}")
    return RUNTIMES[name](bundle, threads)
