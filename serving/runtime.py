"""One interface over the engines that can run a bundle's pipeline.

``onnxruntime`` (default) runs the bundle's exported ONNX graphs on the CPU; ``torch`` runs
the PyTorch modules and is the reference. A GPU engine takes the GPU's index after a colon
(``torch-cuda:1``; default 0). Asking for an engine that cannot run gives a PurifierError that
says why; there is no silent fallback.
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
    on_gpu = False  # a GPU engine: takes a device index (``NAME:INDEX``); ONNX Runtime's then preloads the CUDA
    # libraries and binds outputs on the device, copied back once

    @abstractmethod
    def purify(self, image: np.ndarray, mask: np.ndarray, noise: np.ndarray) -> np.ndarray:
        """g(t(x)), the purified images (the images themselves for a bundle without purifier)."""

    @abstractmethod
    def classifier(self, image: np.ndarray) -> np.ndarray:
        """Logits of the bare classifier."""

    @abstractmethod
    def pipeline(self, image: np.ndarray, mask: np.ndarray, noise: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(logits, purified) of the defended model in one call (one fused graph)."""

    def pipeline_logits(self, image: np.ndarray, mask: np.ndarray, noise: np.ndarray) -> np.ndarray:
        """The defended model's logits alone: the engine ``purifier.smoothing.certify`` draws from."""
        return self.pipeline(image, mask, noise)[0]


class OnnxRuntime(Runtime):
    """The exported graphs in ONNX Runtime, on the CPU or (``onnxruntime-cuda``, ``onnxruntime-tensorrt``) on an NVIDIA GPU."""

    name = "onnxruntime"
    providers: tuple[str, ...] = ("CPUExecutionProvider",)  # in ONNX Runtime's order of preference
    export = "onnx"  # which exports entry of bundle.json holds the graphs

    def __init__(self, bundle: Bundle, threads: int = 0, device_index: int = 0, spinning: bool = False, basic_optimisation: bool = False) -> None:
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

        self._device_index = device_index
        providers = [(provider, {"device_id": device_index}) if self.on_gpu else provider for provider in self.providers]

        def session(stage: str):
            return onnxruntime.InferenceSession(str(bundle.file(graphs[stage]["file"])), options, providers=providers)

        self._pipeline, self._classifier = session("pipeline"), session("classifier")
        self._purifier = session("purifier") if "purifier" in graphs else None

    def _run(self, session, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        if not self.on_gpu:
            return session.run(None, feeds)
        binding = session.io_binding()
        for name, value in feeds.items():
            binding.bind_cpu_input(name, value)
        for output in session.get_outputs():
            binding.bind_output(output.name, "cuda", self._device_index)
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

    name, precision, on_gpu = "tensorrt-fp16", "fp16", True

    def __init__(self, bundle: Bundle, threads: int = 0, device_index: int = 0) -> None:
        trt = import_tensorrt()
        self._device = torch.device("cuda", device_index)
        torch.cuda.set_device(self._device)  # TensorRT deserialises and runs on the current device
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
                buffers[name] = torch.from_numpy(feeds[name]).to(self._device).contiguous()
                context.set_input_shape(name, tuple(buffers[name].shape))
        for name in names:
            if name not in buffers:
                buffers[name] = torch.empty(tuple(context.get_tensor_shape(name)), dtype=torch.float32, device=self._device)
                outputs.append(name)
            context.set_tensor_address(name, buffers[name].data_ptr())
        stream = torch.cuda.current_stream(self._device)
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
    """The bundle's PyTorch modules, the reference; ``torch-cuda`` runs them on a GPU, ``torch-bf16`` on the CPU in bfloat16."""

    name, on_gpu = "torch", False
    autocast: torch.dtype | None = None  # matrix products in this precision (torch.autocast), weights kept in float32

    def __init__(self, bundle: Bundle, threads: int = 0, device_index: int = 0) -> None:
        if self.on_gpu and not torch.cuda.is_available():
            raise PurifierError(f"runtime {self.name} needs a CUDA GPU, and PyTorch sees none here (a CPU build, or no driver); use --runtime torch")
        if threads:
            torch.set_num_threads(threads)
        self._device = torch.device("cuda", device_index) if self.on_gpu else torch.device("cpu")
        self._model = bundle.pipeline().to(self._device)
        if self.autocast is not None:
            self._model.to(memory_format=torch.channels_last)  # oneDNN's blocked bf16 convolutions want NHWC

    def _tensors(self, *arrays: np.ndarray) -> list[torch.Tensor]:
        return [torch.from_numpy(array).to(self._device) for array in arrays]

    def _precision(self):
        return torch.autocast(self._device.type, self.autocast, enabled=self.autocast is not None)

    @torch.no_grad()
    def purify(self, image, mask, noise):
        with self._precision():
            purified = self._model.purify_with(*self._tensors(image, mask, noise))
        return purified.float().cpu().numpy()

    @torch.no_grad()
    def pipeline(self, image, mask, noise):
        with self._precision():
            logits, purified = self._model.forward_with(*self._tensors(image, mask, noise))
        return logits.float().cpu().numpy(), purified.float().cpu().numpy()

    @torch.no_grad()
    def classifier(self, image):
        with self._precision():
            logits = self._model.classifier(*self._tensors(image))
        return logits.float().cpu().numpy()


class TorchCudaRuntime(TorchRuntime):
    name, on_gpu = "torch-cuda", True


class TorchBf16Runtime(TorchRuntime):
    """bfloat16 convolutions through oneDNN, which runs them on AMX tiles or AVX-512 BF16 where the CPU has them
    (benchmarks/runtimes.py measures which, and the accuracy against float32)."""

    name, autocast = "torch-bf16", torch.bfloat16


RUNTIMES: dict[str, type[Runtime]] = {
    "onnxruntime": OnnxRuntime, "onnxruntime-int8": OnnxInt8Runtime, "onnxruntime-cuda": OnnxCudaRuntime,
    "onnxruntime-tensorrt": OnnxTensorrtRuntime, "tensorrt-fp16": TensorRTRuntime, "tensorrt-int8": TensorRTInt8Runtime, "torch": TorchRuntime,
    "torch-cuda": TorchCudaRuntime, "torch-bf16": TorchBf16Runtime,
}


def parse_runtime(spec: str) -> tuple[type[Runtime], int]:
    """``NAME`` or ``NAME:INDEX`` (a GPU engine on GPU INDEX) → (engine class, device index), or a one-line PurifierError."""
    name, colon, index = spec.partition(":")
    if name not in RUNTIMES:
        raise PurifierError(f"unknown runtime {name!r}; available: {', '.join(RUNTIMES)}")
    engine = RUNTIMES[name]
    if not colon:
        return engine, 0
    if not engine.on_gpu:
        raise PurifierError(f"runtime {name} runs on the CPU and takes no device index; use --runtime {name}")
    if not index.isdigit():
        raise PurifierError(f"runtime {spec!r}: the device index after ':' must be a GPU number such as {name}:0")
    return engine, int(index)


def create_runtime(bundle: Bundle, spec: str = "onnxruntime", threads: int = 0) -> Runtime:
    engine, device_index = parse_runtime(spec)
    return engine(bundle, threads, device_index)
