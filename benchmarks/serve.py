"""Serving throughput and latency, measured side by side in one run, on real Fashion-MNIST PNGs.

For concurrency C = 1, 8 and 32:
  (a) in process: the bundle's pipeline in ONNX Runtime through PurificationService, C images
      decoded and run as one batch per round (the upper bound of dynamic batching, no HTTP);
  (b) TorchServe with our handler (ONNX Runtime, dynamic batching) over HTTP, C client threads;
  (c) TorchServe with a plain eager-PyTorch handler (benchmarks/eager_handler.py, one request
      per inference call) over HTTP, C client threads.
Prints images/s, p50 and p99 latency per request, the ratios b/a and b/c, and for (b) and (c)
at C = 32 the CPU time per image of TorchServe's frontend, its workers and this client (all
share the machine's cores); writes JSON.
TorchServe runs from a private state directory on 127.0.0.1 and is stopped afterwards.

    python benchmarks/serve.py [--bundle B] [--requests 400] [--out benchmarks/results/serve.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from pathlib import Path

import numpy as np
import psutil
import requests

from purifier.bundle import DEFAULT_BUNDLE, load_bundle
from purifier.data import load_dataset
from purifier.images import encode_png
from serving import torchserve
from serving.service import PurificationService

CONCURRENCY = (1, 8, 32)
PORT = 18380


def summarise(latencies_s: list[float], wall_s: float, errors: int) -> dict:
    milliseconds = np.array(latencies_s) * 1000
    return {"images_per_s": round(len(latencies_s) / wall_s, 1), "p50_ms": round(float(np.percentile(milliseconds, 50)), 2),
            "p99_ms": round(float(np.percentile(milliseconds, 99)), 2), "errors": errors, "requests": len(latencies_s)}


def in_process(service: PurificationService, pngs: list[bytes], concurrency: int, total: int) -> dict:
    """(a): rounds of ``concurrency`` images decoded and run as one batch; each image's latency is its round's."""
    latencies, began = [], time.perf_counter()
    for start in range(0, total, concurrency):
        round_began = time.perf_counter()
        images = np.stack([service.decode(pngs[(start + k) % len(pngs)]) for k in range(concurrency)])
        service.run(images)
        latencies += [time.perf_counter() - round_began] * concurrency
    return summarise(latencies, time.perf_counter() - began, 0)


def over_http(url: str, key: str, pngs: list[bytes], concurrency: int, total: int) -> dict:
    """(b), (c): ``concurrency`` client threads posting PNGs until ``total`` requests are answered."""
    counter, lock, latencies, errors = iter(range(total)), threading.Lock(), [], [0]

    def client() -> None:
        with requests.Session() as session:
            session.headers["Authorization"] = f"Bearer {key}"
            while True:
                with lock:
                    index = next(counter, None)
                if index is None:
                    return
                began = time.perf_counter()
                response = session.post(url, data=pngs[index % len(pngs)], timeout=60)
                elapsed = time.perf_counter() - began
                with lock:
                    latencies.append(elapsed)
                    errors[0] += response.status_code != 200

    began = time.perf_counter()
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        for future in [pool.submit(client) for _ in range(concurrency)]:
            future.result()
    return summarise(latencies, time.perf_counter() - began, errors[0])


def _cpu_seconds() -> dict[str, float]:
    """User+system CPU seconds so far of TorchServe's frontend, its Python workers, and this client process."""
    totals = {"frontend": 0.0, "workers": 0.0, "client": sum(psutil.Process().cpu_times()[:2])}
    for process in psutil.process_iter(["cmdline"]):
        command = " ".join(process.info["cmdline"] or [])
        role = "frontend" if "org.pytorch.serve.ModelServer" in command else "workers" if "model_service_worker" in command else None
        if role:
            try:
                totals[role] += sum(process.cpu_times()[:2])
            except psutil.Error:
                pass
    return totals


def served(bundle: Path, pngs: list[bytes], total: int, port: int, **options) -> dict:
    """Latency rows per concurrency, and where the CPU went (ms per image) during the last one."""
    server = torchserve.serve(bundle, port=port, **options)
    try:
        over_http(server.prediction_url(), server.inference_key, pngs, 8, 50)  # warm-up
        rows = {c: over_http(server.prediction_url(), server.inference_key, pngs, c, total) for c in CONCURRENCY[:-1]}
        before = _cpu_seconds()
        rows[CONCURRENCY[-1]] = over_http(server.prediction_url(), server.inference_key, pngs, CONCURRENCY[-1], total)
        after = _cpu_seconds()
        rows[CONCURRENCY[-1]]["cpu_ms_per_image"] = {key: round((after[key] - before[key]) / total * 1000, 2) for key in after}
        return rows
    finally:
        torchserve.stop()


def table(results: dict) -> str:
    lines = ["| setup | C | images/s | p50 ms | p99 ms | errors |", "|---|---|---|---|---|---|"]
    for setup, rows in results.items():
        for concurrency, row in rows.items():
            lines.append(f"| {setup} | {concurrency} | {row['images_per_s']} | {row['p50_ms']} | {row['p99_ms']} | {row['errors']} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", type=Path, default=DEFAULT_BUNDLE)
    parser.add_argument("--requests", type=int, default=400, help="requests per setup and concurrency")
    parser.add_argument("--batch-size", type=int, default=torchserve.Batching.batch_size, help="(b)'s dynamic batching")
    parser.add_argument("--max-batch-delay", type=int, default=torchserve.Batching.max_batch_delay_ms, help="(b)'s dynamic batching, ms")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/serve.json"))
    args = parser.parse_args()
    batching = torchserve.Batching(args.batch_size, args.max_batch_delay)
    os.environ["PURIFIER_SERVE_DIR"] = tempfile.mkdtemp(prefix="purifier-bench-")
    bundle = load_bundle(args.bundle)
    pngs = [encode_png(image) for image in load_dataset("fashion-mnist", "test").images[:256]]

    service = PurificationService.from_bundle(bundle.path)
    in_process(service, pngs, 8, 64)  # warm-up
    results = {"a: in-process ONNX Runtime": {c: in_process(service, pngs, c, args.requests) for c in CONCURRENCY}}
    results["b: TorchServe, our handler"] = served(bundle.path, pngs, args.requests, PORT, batching=batching)
    results["c: TorchServe, eager handler"] = served(bundle.path, pngs, args.requests, PORT + 10, handler=Path(__file__).with_name("eager_handler.py"),
                                                      batching=torchserve.Batching(1, 0))
    a, b, c = (results[key][32]["images_per_s"] for key in results)
    ratios = {"b_over_a_at_32": round(b / a, 2), "b_over_c_at_32": round(b / c, 2)}
    report = {
        "bundle": bundle.name, "machine": f"{platform.machine()}, {os.cpu_count()} cpus", "requests": args.requests,
        "batching": asdict(batching), "results": {k: {str(c): v for c, v in rows.items()} for k, rows in results.items()},
        "ratios": ratios, "goal": {"b_over_a_at_32 >= 0.6": ratios["b_over_a_at_32"] >= 0.6, "b_over_c_at_32 >= 2": ratios["b_over_c_at_32"] >= 2,
                                   "b_p99_at_1_under_25ms": results["b: TorchServe, our handler"][1]["p99_ms"] < 25},
    }
    print(table(results))
    for key in list(results)[1:]:
        print(f"{key}, CPU ms per image at C={CONCURRENCY[-1]}: {results[key][CONCURRENCY[-1]]['cpu_ms_per_image']}")
    print(json.dumps(ratios), json.dumps(report["goal"]))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
