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
    """Runs g(t(x)), f(x) and the fused f(g(t(x))) on float32 NCHW batches; mask and noise come from the caller."""

    name: str

    @abstractmethod
    def purify(self, image: np.ndarray, mask: np.ndarray, noise: np.ndarray) -> np.ndarray:
        """g(t(x)), the purified images (the images themselves for a bundle without purifier)."""

    @abstractmethod
    def classifier(self, image: np.ndarray) -> np.ndarray:
        """Logits of the bare classifier."""

    @abstractmethod
    def pipeline(self, image: np.ndarray, mask: np.ndarray, noise: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(logits, purified) of the defended model in one call (one fused graph)."""


class OnnxRuntime(Runtime):
    """The exported graphs in ONNX Runtime, on the CPU or (``onnxruntime-cuda``, ``onnxruntime-tensorrt``) on an NVIDIA GPU."""

    name = "onnxruntime"
    providers: tuple[str, ...] = ("CPUExecutionProvider",)  # in ONNX Runtime's order of preference
    export = "onnx"  # which exports entry of bundle.json holds the graphs
    on_gpu = False  # CUDA providers: CUDA libraries preloaded, outputs bound on the device and copied back once

    def __init__(self, bundle: Bundle, threads: int = 0, spinning: bool = False, basic_optimisation: bool = False) -> None:
        """``spinning`` and ``basic_optimisation`` exist for benchmarks/runtimes.py, which measures what the defaults buy."""
        import onnxruntime

        graphs = (bundle.manifest.get("exports") or {}).get(self.export, {}).get("graphs", {})
        if "pipeline" not in graphs or "classifier" not in graphs:
            command = "export" if self.export == "onnx" else "quantize"
            raise PurifierError(f"bundle {bundle.path} has no {self.export} graphs; run 'purifier {command} {bundle.path}' first")
        missing = [provider for provider in self.providers if provider not in onnxruntime.get_available_providers()]
        if missing:
            raise PurifierError(f"runtime {self.name} needs ONNX Runtime's {', '.join(missing)}, which this installation lacks "
                                f"(available: {', '.join(onnxruntime.get_available_providers())}); install onnxruntime-gpu or use --runtime onnxruntime")
        if self.on_gpu and hasattr(onnxruntime, "preload_dlls"):
            onnxruntime.preload_dlls()  # CUDA and cuDNN from the nvidia-* wheels a CUDA torch installs, when the system has none
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        levels = onnxruntime.GraphOptimizationLevel
        options.graph_optimization_level = levels.ORT_ENABLE_BASIC if basic_optimisation else levels.ORT_ENABLE_ALL
        # Idle intra-op threads sleep instead of spinning. On 2 cores shared with TorchServe's
        # frontend and clients, spinning burns the cores the other work needs: with it,
        # benchmarks/serve.py measured 855 instead of 1,367 images/s in process at batch 32 and
        # 341 instead of 487 through TorchServe. Alone on the machine, spinning is faster at
        # batch 1 (about 1,750 vs 1,150 images/s) and equal at batch 64.
        options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")

        def session(stage: str):
            return onnxruntime.InferenceSession(str(bundle.file(graphs[stage]["file"])), options, providers=list(self.providers))

        self._pipeline, self._classifier = session("pipeline"), session("classifier")
        self._purifier = session("purifier") if "purifier" in graphs else None

    def _run(self, session, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        if not self.on_gpu:
            return session.run(None, feeds)
        binding = session.io_binding()
        for name, value in feeds.items():
            binding.bind_cpu_input(name, value)
        for output in session.get_outputs():
            binding.bind_output(output.name, "cuda")
        session.run_with_iobinding(binding)
        return binding.copy_outputs_to_cpu()

    def purify(self, image, mask, noise):
        if self._purifier is None:
            return image
        return self._run(self._purifier, {"image": image, "mask": mask, "noise": noise})[0]

    def pipeline(self, image, mask, noise):
        logits, purified = self._run(self._pipeline, {"image": image, "mask": mask, "noise": noise})
        return logits, purified

    def classifier(self, image):
        return self._run(self._classifier, {"image": image})[0]


class OnnxInt8Runtime(OnnxRuntime):
    """The INT8 graphs of ``purifier quantize`` (static, calibrated) in ONNX Runtime on the CPU."""

    name = "onnxruntime-int8"
    export = "onnx_int8"


class OnnxCudaRuntime(OnnxRuntime):
    name = "onnxruntime-cuda"
    providers = ("CUDAExecutionProvider",)
    on_gpu = True


class OnnxTensorrtRuntime(OnnxRuntime):
    """ONNX Runtime's TensorRT execution provider (engines built by ONNX Runtime at session start), CUDA for the rest."""

    name = "onnxruntime-tensorrt"
    providers = ("TensorrtExecutionProvider", "CUDAExecutionProvider")
    on_gpu = True


def import_tensorrt():
    """The tensorrt module, on a machine with a CUDA GPU, or a PurifierError that says what is missing."""
    try:
        import tensorrt
    except ImportError:
        raise PurifierError("TensorRT is not installed (pip install tensorrt on a machine with an NVIDIA GPU and driver); "
                            "use --runtime onnxruntime or onnxruntime-cuda instead") from None
    if not torch.cuda.is_available():
        raise PurifierError("TensorRT needs an NVIDIA GPU, and PyTorch sees none here; use --runtime onnxruntime")
    return tensorrt


class TensorRTRuntime(Runtime):
    """The engines of ``purifier export --tensorrt PRECISION`` on an NVIDIA GPU; I/O buffers are torch CUDA tensors.

    Written against TensorRT's documented name-based Python API (10.x, unchanged in 11.x) and never run: this
    project's machine has neither a GPU nor TensorRT's runtime libraries.
    """

    name, precision = "tensorrt-fp16", "fp16"

    def __init__(self, bundle: Bundle, threads: int = 0) -> None:
        trt = import_tensorrt()
        graphs = (bundle.manifest.get("exports") or {}).get(f"tensorrt_{self.precision}", {}).get("graphs")
        if not graphs:
            raise PurifierError(f"bundle {bundle.path} has no {self.precision} TensorRT engines; run 'purifier export {bundle.path} --tensorrt {self.precision}'")
        runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self._input_mode = trt.TensorIOMode.INPUT
        self._engines = {stage: runtime.deserialize_cuda_engine(bundle.file(record["file"]).read_bytes()) for stage, record in graphs.items()}
        self._contexts = {stage: engine.create_execution_context() for stage, engine in self._engines.items()}

    def _run(self, stage: str, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        engine, context = self._engines[stage], self._contexts[stage]
        names = [engine.get_tensor_name(index) for index in range(engine.num_io_tensors)]
        buffers, outputs = {}, []
        for name in names:
            if engine.get_tensor_mode(name) == self._input_mode:
                buffers[name] = torch.from_numpy(feeds[name]).cuda().contiguous()
                context.set_input_shape(name, tuple(buffers[name].shape))
        for name in names:
            if name not in buffers:
                buffers[name] = torch.empty(tuple(context.get_tensor_shape(name)), dtype=torch.float32, device="cuda")
                outputs.append(name)
            context.set_tensor_address(name, buffers[name].data_ptr())
        stream = torch.cuda.current_stream()
        context.execute_async_v3(stream.cuda_stream)
        stream.synchronize()
        return [buffers[name].cpu().numpy() for name in outputs]

    def purify(self, image, mask, noise):
        if "purifier" not in self._engines:
            return image
        return self._run("purifier", {"image": image, "mask": mask, "noise": noise})[0]

    def classifier(self, image):
        return self._run("classifier", {"image": image})[0]

    def pipeline(self, image, mask, noise):
        logits, purified = self._run("pipeline", {"image": image, "mask": mask, "noise": noise})
        return logits, purified


class TensorRTInt8Runtime(TensorRTRuntime):
    name, precision = "tensorrt-int8", "int8"


class TorchRuntime(Runtime):
    """The bundle's PyTorch modules, the reference; ``torch-cuda`` runs them on the GPU PyTorch sees first
    (choose it with CUDA_VISIBLE_DEVICES)."""

    name, device = "torch", "cpu"

    def __init__(self, bundle: Bundle, threads: int = 0) -> None:
        if self.device == "cuda" and not torch.cuda.is_available():
            raise PurifierError(f"runtime {self.name} needs a CUDA GPU, and PyTorch sees none here (a CPU build, or no driver); use --runtime torch")
        if threads:
            torch.set_num_threads(threads)
        self._model = bundle.pipeline().to(self.device)

    def _tensors(self, *arrays: np.ndarray) -> list[torch.Tensor]:
        return [torch.from_numpy(array).to(self.device) for array in arrays]

    @torch.no_grad()
    def purify(self, image, mask, noise):
        return self._model.purify_with(*self._tensors(image, mask, noise)).cpu().numpy()

    @torch.no_grad()
    def pipeline(self, image, mask, noise):
        logits, purified = self._model.forward_with(*self._tensors(image, mask, noise))
        return logits.cpu().numpy(), purified.cpu().numpy()

    @torch.no_grad()
    def classifier(self, image):
        return self._model.classifier(*self._tensors(image)).cpu().numpy()


class TorchCudaRuntime(TorchRuntime):
    name, device = "torch-cuda", "cuda"


RUNTIMES: dict[str, type[Runtime]] = {
    "onnxruntime": OnnxRuntime, "onnxruntime-int8": OnnxInt8Runtime, "onnxruntime-cuda": OnnxCudaRuntime,
    "onnxruntime-tensorrt": OnnxTensorrtRuntime, "tensorrt-fp16": TensorRTRuntime, "tensorrt-int8": TensorRTInt8Runtime, "torch": TorchRuntime,
    "torch-cuda": TorchCudaRuntime,
}


def create_runtime(bundle: Bundle, name: str = "onnxruntime", threads: int = 0) -> Runtime:
    if name not in RUNTIMES:
        raise PurifierError(f"unknown runtime {name!r}; available: {', '.join(RUNTIMES)}")
    return RUNTIMES[name](bundle, threads)
