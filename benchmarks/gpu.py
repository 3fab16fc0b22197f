"""The GPU check of issue 22: prepared on the CPU machine, run on an NVIDIA GPU in one call.

The GPU machine has neither the data set, nor onnxconverter-common, nor this CPU, so the check comes in two steps:

    python benchmarks/gpu.py prepare [--images 1024] [--dir .gpu-check]
        on the CPU machine: a copy of the bundle with its FP16 graphs (export/float16.py) and INT8 Q/DQ graphs
        (``purifier quantize``, no robustness replay), and reference.npz: the first N test images, one
        random-transform draw each, their labels and the CPU reference logits (PyTorch, float32);
    python benchmarks/gpu.py measure [--dir .gpu-check] [--budget-s 420] [--out benchmarks/results/gpu.json]
        on the GPU machine: for every GPU engine (torch-cuda, onnxruntime-cuda, onnxruntime-tensorrt, tensorrt-fp16,
        tensorrt-int8; TensorRT engines built first when TensorRT is installed) parity against the CPU reference
        (max |Δ logit|, agreement, accuracy) or the one-line reason it cannot run, then images/s and median
        latency per call at batch 1, 64, 1,024 and the best of a doubling scan (numpy in and out, as the server
        calls it); and PyTorch in process with the data on the GPU: float32, bfloat16 autocast, and bfloat16
        replayed as a CUDA graph, at the same batches. Issue 22's goals: ≥ 100,000 images/s at the best batch
        (TensorRT FP16), in-process batch-1 latency ≤ 0.3 ms. Each measurement is bounded by a share of
        ``--budget-s``; the JSON is written after every engine, so a run cut short keeps what it measured.

On a machine without a GPU, ``measure`` records each engine's refusal and exits 0; tests/test_gpu_check.py runs it so,
with the CPU engine ``torch`` added (``--engines``) to exercise the parity and speed code. The CUDA-graph path runs
only on a GPU. On this workplace's lent H200 (PyTorch 2.11 for CUDA 13, no onnxruntime-gpu, no TensorRT) only the
PyTorch rows can run: onnxruntime-gpu's wheel (243 MiB) and TensorRT's libraries are over the 64 MiB a call may carry.
There the command is ``PYTHONPATH=. PYTHONUNBUFFERED=1 python3 benchmarks/gpu.py measure --out $OUT/gpu.json`` with
``.gpu-check`` carried along (about 5 minutes).
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import time
from pathlib import Path

import numpy as np
import torch

from purifier.assets import REFERENCE_PIPELINE
from purifier.bundle import load_bundle
from purifier.errors import PurifierError
from serving.runtime import create_runtime

ENGINES = ("torch-cuda", "onnxruntime-cuda", "onnxruntime-tensorrt", "tensorrt-fp16", "tensorrt-int8")
BATCHES = (1, 64, 1024)
SCAN = (2048, 4096, 8192, 16384)  # the best batch is the fastest of BATCHES and these, up to --largest-batch
GOAL_IMAGES_PER_S, GOAL_LATENCY_MS = 100_000, 0.3


def prepare(bundle_path: Path, directory: Path, images: int) -> None:
    from export.float16 import export_float16
    from export.quantize import quantize_bundle

    bundle = load_bundle(bundle_path)
    if directory.exists():
        shutil.rmtree(directory)
    directory.mkdir(parents=True)
    shutil.copytree(bundle.path, directory / "bundle", symlinks=False)
    export_float16(directory / "bundle")
    quantize_bundle(directory / "bundle", robust_images=0)
    image, label = (array.numpy() for array in bundle.data("test").head(images).tensors())
    mask, noise = bundle.transform.sample(len(image), bundle.input_shape, np.random.default_rng(0))
    logits, _ = create_runtime(bundle, "torch").pipeline(image, mask, noise)
    np.savez_compressed(directory / "reference.npz", image=image, label=label, mask=mask, noise=noise, logits=logits)
    print(f"wrote {directory}: the bundle with FP16 and INT8 graphs, and {len(image)} reference images")


def _median_ms(call, seconds: float) -> tuple[float, int]:
    """Median wall time of one call (ms) over as many calls as fit in ``seconds`` (at least 3), after 2 warm-ups."""
    call(), call()
    times, began = [], time.perf_counter()
    while len(times) < 3 or time.perf_counter() - began < seconds:
        started = time.perf_counter()
        call()
        times.append(time.perf_counter() - started)
    return float(np.median(times)) * 1e3, len(times)


def _speeds(call_at, seconds: float, largest: int) -> dict:
    """{batch: {images_per_s, latency_ms}} at BATCHES, then the doubling scan while it keeps getting faster, and the best."""
    speeds = {}
    for batch in (*BATCHES, *(batch for batch in SCAN if batch <= largest)):
        try:
            latency, _ = _median_ms(call_at(batch), seconds)
        except (RuntimeError, PurifierError) as error:  # out of memory, or past an engine's batch profile
            speeds[str(batch)] = {"error": str(error).splitlines()[0][:200]}
            break
        speeds[str(batch)] = {"images_per_s": round(batch / latency * 1e3, 1), "latency_ms": round(latency, 4)}
        if batch in SCAN and speeds[str(batch)]["images_per_s"] < speeds[str(batch // 2)]["images_per_s"]:
            break
    measured = {batch: row for batch, row in speeds.items() if "images_per_s" in row}
    best = max(measured, key=lambda batch: measured[batch]["images_per_s"])
    return {"batches": speeds, "best_batch": int(best), "best_images_per_s": measured[best]["images_per_s"]}


def _tiled(array: np.ndarray, batch: int) -> np.ndarray:
    return np.resize(array, (batch, *array.shape[1:]))


def engine_check(bundle, name: str, reference: dict, seconds: float, largest: int) -> dict:
    """Parity against the CPU reference and speed through the Runtime interface (numpy in and out)."""
    try:
        if name.startswith("tensorrt-") and not (bundle.manifest.get("exports") or {}).get(f"tensorrt_{name.split('-')[1]}"):
            from export.tensorrt import build_bundle_engines

            began = time.perf_counter()
            bundle = build_bundle_engines(bundle.path, name.split("-")[1], max_batch=largest)
            print(f"{name}: engines built in {time.perf_counter() - began:.0f} s", flush=True)
        runtime = create_runtime(bundle, name)
    except PurifierError as refusal:
        return {"ran": False, "reason": str(refusal)}
    logits, _ = runtime.pipeline(reference["image"], reference["mask"], reference["noise"])
    predicted, expected = logits.argmax(1), reference["logits"].argmax(1)
    parity = {"images": len(logits), "max_abs_logit_diff": float(np.abs(logits - reference["logits"]).max()),
              "agreement": float((predicted == expected).mean()), "accuracy": float((predicted == reference["label"]).mean()),
              "reference_accuracy": float((expected == reference["label"]).mean())}

    def call_at(batch):
        feeds = [_tiled(reference[key], batch) for key in ("image", "mask", "noise")]
        return lambda: runtime.pipeline(*feeds)

    return {"ran": True, "parity": parity, "speed": _speeds(call_at, seconds, largest)}


def in_process_check(bundle, reference: dict, seconds: float, largest: int) -> dict:
    """PyTorch with inputs already on the GPU: float32, bfloat16 autocast, and bfloat16 as a replayed CUDA graph."""
    if not torch.cuda.is_available():
        return {"ran": False, "reason": "PyTorch sees no CUDA GPU here"}
    model = bundle.pipeline().cuda().eval()
    results = {}
    for variant in ("fp32", "bf16", "bf16 cuda graph"):
        autocast = torch.autocast("cuda", torch.bfloat16, enabled=variant != "fp32")

        def call_at(batch, variant=variant, autocast=autocast):
            feeds = [torch.from_numpy(_tiled(reference[key], batch)).cuda() for key in ("image", "mask", "noise")]

            def forward():
                with torch.no_grad(), autocast:
                    return model.forward_with(*feeds)

            if variant != "bf16 cuda graph":
                return lambda: (forward(), torch.cuda.synchronize())
            stream = torch.cuda.Stream()
            stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(stream):
                forward()  # warm-up on a side stream, as CUDA graph capture requires
            torch.cuda.current_stream().wait_stream(stream)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                forward()
            return lambda: (graph.replay(), torch.cuda.synchronize())

        results[variant] = _speeds(call_at, seconds, largest)
        print(f"torch in process, {variant}: best {results[variant]['best_images_per_s']:.0f} images/s", flush=True)
    return {"ran": True, "gpu": torch.cuda.get_device_name(), "variants": results}


def measure(directory: Path, out: Path, budget_s: float, engines: tuple[str, ...] = ENGINES, largest: int = SCAN[-1]) -> None:
    bundle = load_bundle(directory / "bundle")
    with np.load(directory / "reference.npz") as data:
        reference = {key: data[key] for key in data.files}
    seconds = budget_s / (len(engines) + 3) / (len(BATCHES) + len(SCAN))  # per batch size, so the whole run fits the budget
    report = {"machine": f"{platform.machine()}, {platform.node()}", "torch": torch.__version__,
              "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None, "bundle": bundle.name,
              "reference": "PyTorch float32 on the CPU machine that ran 'prepare'", "engines": {}}
    for name in engines:
        report["engines"][name] = engine_check(bundle, name, reference, seconds, largest)
        row = report["engines"][name]
        print(f"{name}: " + (f"agreement {row['parity']['agreement']:.2%}, best {row['speed']['best_images_per_s']:.0f} images/s"
                             if row["ran"] else f"not run: {row['reason']}"), flush=True)
        _write(out, report)
    report["torch_in_process"] = in_process_check(bundle, reference, seconds, largest)
    report["goals"] = _goals(report)
    _write(out, report)
    print(json.dumps(report["goals"], indent=2))


def _goals(report: dict) -> dict:
    fp16 = report["engines"].get("tensorrt-fp16", {"ran": False})
    in_process = report["torch_in_process"]
    latencies = [variant["batches"]["1"]["latency_ms"] for variant in in_process.get("variants", {}).values() if "latency_ms" in variant["batches"]["1"]]
    return {"images_per_s_goal": GOAL_IMAGES_PER_S,
            "tensorrt_fp16_best_images_per_s": fp16["speed"]["best_images_per_s"] if fp16["ran"] else None,
            "latency_goal_ms": GOAL_LATENCY_MS, "best_in_process_batch1_latency_ms": min(latencies) if latencies else None}


def _write(out: Path, report: dict) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_suffix(".partial")
    partial.write_text(json.dumps(report, indent=2) + "\n")
    partial.replace(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    steps = parser.add_subparsers(dest="step", required=True)
    prepare_step = steps.add_parser("prepare", help="on the CPU machine: the bundle's graphs and the reference")
    prepare_step.add_argument("--bundle", type=Path, default=REFERENCE_PIPELINE)
    prepare_step.add_argument("--images", type=int, default=1024)
    prepare_step.add_argument("--dir", type=Path, default=Path(".gpu-check"))
    measure_step = steps.add_parser("measure", help="on the GPU machine: parity and speed of every GPU engine")
    measure_step.add_argument("--dir", type=Path, default=Path(".gpu-check"))
    measure_step.add_argument("--budget-s", type=float, default=420.0, help="seconds for all the timing (engine builds not counted)")
    measure_step.add_argument("--out", type=Path, default=Path("benchmarks/results/gpu.json"))
    measure_step.add_argument("--largest-batch", type=int, default=SCAN[-1], help=f"end of the doubling scan (default {SCAN[-1]})")
    measure_step.add_argument("--engines", default=",".join(ENGINES), help=f"comma-separated runtimes (default {','.join(ENGINES)})")
    args = parser.parse_args()
    if args.step == "prepare":
        prepare(args.bundle, args.dir, args.images)
    else:
        measure(args.dir, args.out, args.budget_s, tuple(args.engines.split(",")), args.largest_batch)


if __name__ == "__main__":
    main()
