"""Speed of one bundle's pipeline, measured side by side in one run.

Prints and writes (JSON) for the bundle's defended pipeline:
  * forward+backward over 200 images in PyTorch (the unit of every attack and of training),
  * inference images/s at batch 1 and 64 in PyTorch eager and in ONNX Runtime, and their ratio.

    python benchmarks/pipeline.py [--bundle B] [--out benchmarks/results/pipeline.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
import onnxruntime
import torch

from purifier.assets import REFERENCE_PIPELINE
from purifier.bundle import load_bundle
from serving.runtime import OnnxRuntime, TorchRuntime


def best_of(function, repeats: int) -> float:
    """Fastest of ``repeats`` timed calls after one warm-up call (seconds)."""
    function()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        function()
        times.append(time.perf_counter() - started)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", type=Path, default=REFERENCE_PIPELINE)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/pipeline.json"))
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    bundle = load_bundle(args.bundle)
    pipeline = bundle.pipeline(seed=0)
    shape = bundle.input_shape
    rng = np.random.default_rng(0)

    images = torch.rand(200, *shape)

    def forward_backward():
        x = images.clone().requires_grad_(True)
        pipeline(x).logsumexp(1).sum().backward()

    results = {"fwd_bwd_200_s": best_of(forward_backward, args.repeats)}
    runtimes = {"torch": TorchRuntime(bundle), "onnxruntime": OnnxRuntime(bundle)}
    for batch in (1, 64):
        image = rng.random((batch, *shape), dtype=np.float32)
        mask, noise = bundle.transform.sample(batch, shape, rng)
        for name, runtime in runtimes.items():
            seconds = best_of(lambda: runtime.pipeline(image, mask, noise), args.repeats * (20 if batch == 1 else 1))
            results[f"{name}_batch{batch}_images_per_s"] = batch / seconds
        results[f"onnxruntime_over_torch_batch{batch}"] = results[f"onnxruntime_batch{batch}_images_per_s"] / results[f"torch_batch{batch}_images_per_s"]

    report = {
        "bundle": str(bundle.path), "machine": platform.processor() or platform.machine(), "cpus": torch.get_num_threads(),
        "torch": torch.__version__, "onnxruntime": onnxruntime.__version__, "results": {k: round(v, 4) for k, v in results.items()},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"pipeline forward+backward, 200 images: {results['fwd_bwd_200_s'] * 1000:.0f} ms")
    print(f"{'batch':>5} {'torch img/s':>12} {'onnxruntime img/s':>18} {'ratio':>6}")
    for batch in (1, 64):
        print(f"{batch:>5} {results[f'torch_batch{batch}_images_per_s']:>12.0f} {results[f'onnxruntime_batch{batch}_images_per_s']:>18.0f} "
              f"{results[f'onnxruntime_over_torch_batch{batch}']:>6.2f}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
