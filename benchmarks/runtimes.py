"""Every runtime that can run here, at batch 1, 8, 64 and 256, against the machine's own peak.

In one run: the float32 matrix-multiply peak of this machine (PyTorch, 2048² matmul, best of
several), the FLOPs per image of the bundle's fused pipeline graph (counted from the ONNX graph:
2·MACs of every Conv and Gemm), and images/s of the pipeline (random transform drawn per
image) in PyTorch eager, ONNX Runtime with the project's settings, ONNX Runtime variants (one
thread; threads spinning when idle; basic graph optimisation only; I/O binding) and, with ``--int8``, the
INT8 graphs of ``purifier quantize`` made in a temporary copy. Achieved GFLOP/s and the
fraction of the matmul peak follow. Prints a table, writes JSON.

    python benchmarks/runtimes.py [--bundle B] [--int8] [--out benchmarks/results/runtimes.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import torch

from purifier.bundle import DEFAULT_BUNDLE, load_bundle
from serving.runtime import OnnxInt8Runtime, OnnxRuntime, TorchRuntime

BATCHES = (1, 8, 64, 256)


def matmul_peak_gflops(size: int = 2048, repeats: int = 10) -> float:
    a, b = torch.rand(size, size), torch.rand(size, size)
    a @ b
    best = min(_timed(lambda: a @ b) for _ in range(repeats))
    return 2 * size**3 / best / 1e9


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
    parser.add_argument("--bundle", type=Path, default=DEFAULT_BUNDLE)
    parser.add_argument("--int8", action="store_true", help="also quantize a temporary copy and measure its INT8 graphs")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/runtimes.json"))
    args = parser.parse_args()
    bundle = load_bundle(args.bundle)
    peak = matmul_peak_gflops()
    flops = graph_flops_per_image(bundle.file(bundle.manifest["exports"]["onnx"]["graphs"]["pipeline"]["file"]))
    runtimes = {
        "torch eager": TorchRuntime(bundle),
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
    if scratch:
        shutil.rmtree(scratch.parent)
    print(f"matmul peak {peak:.1f} GFLOP/s; pipeline {flops / 1e9:.3f} GFLOP per image")
    print("| runtime | " + " | ".join(f"batch {b} img/s (GFLOP/s, % of peak)" for b in BATCHES) + " |")
    print("|---|" + "---|" * len(BATCHES))
    for name, row in results.items():
        print(f"| {name} | " + " | ".join(f"{row[b]:.0f} ({row[b] * flops / 1e9:.1f}, {row[b] * flops / 1e9 / peak:.0%})" for b in BATCHES) + " |")
    eager, ort = results["torch eager"], results["onnxruntime (project settings)"]
    report = {
        "bundle": bundle.name, "machine": f"{platform.machine()}, {os.cpu_count()} cpus", "torch_threads": torch.get_num_threads(),
        "matmul_peak_gflops": round(peak, 1), "pipeline_gflop_per_image": round(flops / 1e9, 4),
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
