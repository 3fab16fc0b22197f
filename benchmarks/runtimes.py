"""Every runtime that can run here, at batch 1, 8, 64 and 256, against the machine's own peak.

In one run: the CPU's matrix units (AMX, AVX-512 BF16 and VNNI flags), the matrix-multiply peaks
of this machine (2048², best of several: float32 and bfloat16 in PyTorch, int8 in ONNX Runtime's
MatMulInteger), the FLOPs per image of the bundle's fused pipeline graph (counted from the ONNX
graph: 2·MACs of every Conv and Gemm), and images/s of the pipeline (random transform drawn per
image) in PyTorch eager (float32, and bfloat16 through oneDNN: ``torch-bf16``), ONNX Runtime with
the project's settings, ONNX Runtime variants (one thread; threads spinning when idle; basic graph
optimisation only; I/O binding) and, with ``--int8``, the INT8 graphs of ``purifier quantize`` made
in a temporary copy. Achieved GFLOP/s and the fraction of the float32 peak follow, and the goal
of issue 22: the best runtime at ≥ 80% of that peak with clean accuracy within 1 point of float32
(every runtime classifies the same test images under the same random-transform draws).

Which kernels run: oneDNN names its implementation per convolution (``ONEDNN_VERBOSE``, read in a
child process): ``avx512_core_amx`` means AMX tiles. ONNX Runtime's int8 kernels (MLAS) name none,
so the int8 GEMM's rate stands in: AVX-512 VNNI does at most 4 int8 multiply-adds per float32 one,
AMX 32, so int8 above 6× the float32 peak is AMX at work. Prints a table, writes JSON.

    python benchmarks/runtimes.py [--bundle B] [--int8] [--images 2000] [--out benchmarks/results/runtimes.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import torch

from purifier.assets import REFERENCE_PIPELINE
from purifier.bundle import load_bundle
from purifier.machine import cpu_model_and_matrix_flags
from serving.runtime import OnnxInt8Runtime, OnnxRuntime, TorchBf16Runtime, TorchRuntime

BATCHES = (1, 8, 64, 256)
AMX_INT8_OVER_FP32 = 6.0  # int8 GEMM faster than this many times the float32 one: only AMX does that


def matmul_peak_gflops(dtype: torch.dtype = torch.float32, size: int = 2048, repeats: int = 10) -> float:
    a, b = torch.rand(size, size).to(dtype), torch.rand(size, size).to(dtype)
    a @ b
    best = min(_timed(lambda: a @ b) for _ in range(repeats))
    return 2 * size**3 / best / 1e9


def int8_matmul_peak_gops(size: int = 2048, repeats: int = 10) -> float:
    """uint8 × int8 → int32 in ONNX Runtime (MatMulInteger, the kernel family its QDQ convolutions use)."""
    import onnxruntime
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    weight = numpy_helper.from_array(rng.integers(-128, 128, (size, size), dtype=np.int8), "b")
    graph = helper.make_graph([helper.make_node("MatMulInteger", ["a", "b"], ["y"])], "int8_matmul",
                              [helper.make_tensor_value_info("a", TensorProto.UINT8, [size, size])],
                              [helper.make_tensor_value_info("y", TensorProto.INT32, [size, size])], [weight])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    session = onnxruntime.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    a = rng.integers(0, 256, (size, size), dtype=np.uint8)
    session.run(None, {"a": a})
    best = min(_timed(lambda: session.run(None, {"a": a})) for _ in range(repeats))
    return 2 * size**3 / best / 1e9


def onednn_convolutions(bundle_path: Path) -> list[str]:
    """The oneDNN implementations (e.g. ``brg_conv_fwd:avx512_core_amx``) of torch-bf16's convolutions, from ONEDNN_VERBOSE."""
    child = ("import sys, numpy as np; from purifier.bundle import load_bundle; from serving.runtime import create_runtime; "
             "b = load_bundle(sys.argv[1]); r = create_runtime(b, 'torch-bf16'); x = np.zeros((8, *b.input_shape), np.float32); "
             "r.pipeline(x, *b.transform.sample(8, b.input_shape, np.random.default_rng(0)))")
    lines = subprocess.run([sys.executable, "-c", child, str(bundle_path)], env={**os.environ, "ONEDNN_VERBOSE": "1"},
                           capture_output=True, text=True, check=True).stdout.splitlines()
    return sorted({fields[6] for fields in (line.split(",") for line in lines) if len(fields) > 6 and fields[2:6] == ["primitive", "exec", "cpu", "convolution"]})


def _timed(function) -> float:
    began = time.perf_counter()
    function()
    return time.perf_counter() - began


def graph_flops_per_image(path: Path) -> float:
    """2·MACs of every Conv and Gemm/MatMul of the graph at batch 1 (other ops are a rounding error here)."""
    model = onnx.load(str(path))
    for tensor in model.graph.input:
        tensor.type.tensor_type.shape.dim[0].dim_value = 1
    model = onnx.shape_inference.infer_shapes(model)
    shapes = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim] for v in [*model.graph.value_info, *model.graph.output, *model.graph.input]}
    shapes.update({t.name: list(t.dims) for t in model.graph.initializer})
    flops = 0
    for node in model.graph.node:
        if node.op_type == "Conv":
            weight, output = shapes[node.input[1]], shapes[node.output[0]]
            flops += 2 * int(np.prod(weight)) * int(np.prod(output[2:]))
        elif node.op_type in ("Gemm", "MatMul"):  # output (…, M, N) from (…, M, K): 2·M·N·K
            flops += 2 * int(np.prod(shapes[node.output[0]])) * shapes[node.input[0]][-1]
    return float(flops)


class _IoBound(OnnxRuntime):
    """The project's settings, run through an I/O binding (inputs bound in place, outputs allocated by ONNX Runtime)."""

    def pipeline(self, image, mask, noise):
        binding = self._pipeline.io_binding()
        for name, value in (("image", image), ("mask", mask), ("noise", noise)):
            binding.bind_cpu_input(name, value)
        for output in ("logits", "purified"):
            binding.bind_output(output)
        self._pipeline.run_with_iobinding(binding)
        logits, purified = binding.copy_outputs_to_cpu()
        return logits, purified


def clean_accuracy(runtime, bundle, images: np.ndarray, labels: np.ndarray, batch: int = 256) -> float:
    """Accuracy of the pipeline on real test images, under random-transform draws that depend only on the batch's position."""
    correct = 0
    for start in range(0, len(images), batch):
        image = images[start:start + batch]
        mask, noise = bundle.transform.sample(len(image), bundle.input_shape, np.random.default_rng(start))
        correct += int((runtime.pipeline(image, mask, noise)[0].argmax(1) == labels[start:start + batch]).sum())
    return correct / len(images)


def images_per_s(runtime, bundle, batch: int, seconds: float = 1.5) -> float:
    rng = np.random.default_rng(0)
    image = rng.random((batch, *bundle.input_shape), dtype=np.float32)
    mask, noise = bundle.transform.sample(batch, bundle.input_shape, rng)
    runtime.pipeline(image, mask, noise)
    calls, began = 0, time.perf_counter()
    while time.perf_counter() - began < seconds:
        runtime.pipeline(image, mask, noise)
        calls += 1
    return calls * batch / (time.perf_counter() - began)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", type=Path, default=REFERENCE_PIPELINE)
    parser.add_argument("--int8", action="store_true", help="also quantize a temporary copy and measure its INT8 graphs")
    parser.add_argument("--images", type=int, default=2000, help="test images for each runtime's clean accuracy")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/runtimes.json"))
    args = parser.parse_args()
    bundle = load_bundle(args.bundle)
    cpu, flags = cpu_model_and_matrix_flags()
    peaks = {"fp32": matmul_peak_gflops(), "bf16": matmul_peak_gflops(torch.bfloat16), "int8": int8_matmul_peak_gops()}
    peak = peaks["fp32"]
    flops = graph_flops_per_image(bundle.file(bundle.manifest["exports"]["onnx"]["graphs"]["pipeline"]["file"]))
    runtimes = {
        "torch eager": TorchRuntime(bundle),
        "torch bf16 (oneDNN)": TorchBf16Runtime(bundle),
        "onnxruntime (project settings)": OnnxRuntime(bundle),
        "onnxruntime, 1 thread": OnnxRuntime(bundle, threads=1),
        "onnxruntime, spinning threads": OnnxRuntime(bundle, spinning=True),
        "onnxruntime, basic graph optimisation": OnnxRuntime(bundle, basic_optimisation=True),
        "onnxruntime, I/O binding": _IoBound(bundle),
    }
    scratch = None
    if args.int8:
        from export.quantize import quantize_bundle

        scratch = Path(tempfile.mkdtemp()) / "bundle"
        shutil.copytree(bundle.path, scratch)
        runtimes["onnxruntime int8"] = OnnxInt8Runtime(quantize_bundle(scratch, robust_images=0))
    results = {name: {batch: images_per_s(runtime, bundle, batch) for batch in BATCHES} for name, runtime in runtimes.items()}
    test = bundle.data("test").head(args.images)
    images, labels = (array.numpy() for array in test.tensors())
    accuracy = {name: clean_accuracy(runtime, bundle, images, labels) for name, runtime in runtimes.items()}
    if scratch:
        shutil.rmtree(scratch.parent)
    kernels = onednn_convolutions(bundle.path)
    amx_int8_evident = peaks["int8"] > AMX_INT8_OVER_FP32 * peak
    float_accuracy = accuracy["onnxruntime (project settings)"]
    best_name, best_batch = max(((name, b) for name in results for b in BATCHES), key=lambda nb: results[nb[0]][nb[1]])
    best_fraction = results[best_name][best_batch] * flops / 1e9 / peak
    goal_met = best_fraction >= 0.8 and abs(accuracy[best_name] - float_accuracy) <= 0.01
    print(f"{cpu}; matrix units: " + ", ".join(flag for flag, present in flags.items() if present))
    print(f"matmul peaks: fp32 {peaks['fp32']:.1f} GFLOP/s, bf16 {peaks['bf16']:.1f} GFLOP/s, int8 {peaks['int8']:.1f} GOP/s "
          f"({peaks['int8'] / peak:.1f}× fp32: {'AMX at work' if amx_int8_evident else 'no AMX'} in ONNX Runtime's int8 GEMM); "
          f"pipeline {flops / 1e9:.3f} GFLOP per image")
    print(f"oneDNN convolutions of torch-bf16: {', '.join(kernels)}")
    print("| runtime | " + " | ".join(f"batch {b} img/s (GFLOP/s, % of peak)" for b in BATCHES) + " |")
    print("|---|" + "---|" * len(BATCHES))
    for name, row in results.items():
        print(f"| {name} | " + " | ".join(f"{row[b]:.0f} ({row[b] * flops / 1e9:.1f}, {row[b] * flops / 1e9 / peak:.0%})" for b in BATCHES) + " |")
    print(f"clean accuracy on {len(images)} test images: " + ", ".join(f"{name} {value:.2%}" for name, value in accuracy.items()))
    print(f"best: {best_name} at batch {best_batch}, {best_fraction:.0%} of the fp32 peak, accuracy {accuracy[best_name] - float_accuracy:+.2%} "
          f"vs float: goal (≥ 80%, within 1 point) {'met' if goal_met else 'missed'}")
    eager, ort = results["torch eager"], results["onnxruntime (project settings)"]
    report = {
        "bundle": bundle.name, "machine": f"{platform.machine()}, {cpu}, {os.cpu_count()} cpus",
        "cpu_matrix_flags": flags, "torch_threads": torch.get_num_threads(),
        "matmul_peak_gflops": round(peak, 1), "matmul_peaks_gops": {name: round(value, 1) for name, value in peaks.items()},
        "amx_int8_evident_in_onnxruntime": amx_int8_evident, "onednn_bf16_convolutions": kernels,
        "pipeline_gflop_per_image": round(flops / 1e9, 4),
        "clean_accuracy": {"images": len(images), **{name: round(value, 4) for name, value in accuracy.items()}},
        "best": {"runtime": best_name, "batch": best_batch, "fraction_of_fp32_peak": round(best_fraction, 3),
                 "accuracy_vs_float": round(accuracy[best_name] - float_accuracy, 4), "goal_met": goal_met},
        "images_per_s": {name: {str(b): round(v, 1) for b, v in row.items()} for name, row in results.items()},
        "fraction_of_peak": {name: {str(b): round(v * flops / 1e9 / peak, 3) for b, v in row.items()} for name, row in results.items()},
        "onnxruntime_over_eager": {str(b): round(ort[b] / eager[b], 2) for b in BATCHES},
    }
    print("onnxruntime / eager:", report["onnxruntime_over_eager"])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
