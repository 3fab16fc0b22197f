"""Serving throughput and latency of both fronts beside in-process ONNX Runtime, in one run, on real
Fashion-MNIST PNGs.

Two request kinds: one PNG per request (the raw body to /predictions/NAME) and 32 PNGs per v2 request
(BYTES, base64, to /v2/models/NAME/infer); C = 1, 8 and 32 concurrent clients for each:
  (a) in process: PurificationService on ONNX Runtime, the images of C requests decoded and run as
      one batch per round (the upper bound of dynamic batching, no HTTP);
  (b) the TorchServe front (our handler, dynamic batching);
  (c) the KServe front (`--front kserve`: one process, no cross-request batching);
  (d) TorchServe with a plain eager-PyTorch handler (benchmarks/eager_handler.py), one-image requests only.
Prints images/s and p50/p99 per request, the ratios of each front to (a) at C = 32, and the CPU time per
image of each server's processes and this client at C = 32 (all share the cores); writes JSON. Servers run
from a private state directory on 127.0.0.1 and are stopped afterwards.

    python benchmarks/serve.py [--requests 400] [--out benchmarks/results/serve.json]
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import platform
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import psutil
import requests

from purifier.assets import REFERENCE_PIPELINE
from purifier.bundle import load_bundle
from purifier.data import load_dataset
from purifier.images import encode_png
from serving import server_state, torchserve
from serving.kserve_launch import serve_kserve
from serving.service import PurificationService

CONCURRENCY = (1, 8, 32)
PER_V2_REQUEST = 32
PORT = 18380
ROLES = {"org.pytorch.serve.ModelServer": "torchserve frontend", "model_service_worker": "torchserve workers",
         "serving.sidecar": "sidecar", "serving.kserve_front": "kserve front"}


def summarise(latencies_s: list[float], wall_s: float, errors: int, images_per_request: int) -> dict:
    milliseconds = np.array(latencies_s) * 1000
    return {"images_per_s": round(len(latencies_s) * images_per_request / wall_s, 1), "p50_ms": round(float(np.percentile(milliseconds, 50)), 2),
            "p99_ms": round(float(np.percentile(milliseconds, 99)), 2), "errors": errors, "requests": len(latencies_s)}


def in_process(service: PurificationService, pngs: list[bytes], concurrency: int, total: int, per_request: int) -> dict:
    """(a): rounds of ``concurrency`` requests whose images are decoded and run as one batch; a request's latency is its round's."""
    latencies, began, cursor = [], time.perf_counter(), 0
    for _ in range(0, total, concurrency):
        round_began = time.perf_counter()
        images = np.stack([service.decode(pngs[(cursor + k) % len(pngs)]) for k in range(concurrency * per_request)])
        cursor += concurrency * per_request
        service.run(images)
        latencies += [time.perf_counter() - round_began] * concurrency
    return summarise(latencies, time.perf_counter() - began, 0, per_request)


def over_http(send: Callable[[requests.Session, int], requests.Response], concurrency: int, total: int, per_request: int) -> dict:
    """``concurrency`` client threads sending requests ``send(session, index)`` until ``total`` are answered."""
    counter, lock, latencies, errors = iter(range(total)), threading.Lock(), [], [0]

    def client() -> None:
        with requests.Session() as session:
            while True:
                with lock:
                    index = next(counter, None)
                if index is None:
                    return
                began = time.perf_counter()
                status = send(session, index).status_code
                elapsed = time.perf_counter() - began
                with lock:
                    latencies.append(elapsed)
                    errors[0] += status != 200

    began = time.perf_counter()
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        for future in [pool.submit(client) for _ in range(concurrency)]:
            future.result()
    return summarise(latencies, time.perf_counter() - began, errors[0], per_request)


def senders(server: server_state.Server, pngs: list[bytes]) -> dict[str, Callable]:
    """The two request kinds against ``server``: one raw PNG, and a v2 request of 32 base64 PNGs."""
    keys = server_state.read_keys()
    headers = {"Authorization": f"Bearer {keys.inference}"} if keys else {}
    encoded = [base64.b64encode(png).decode() for png in pngs]
    v2_url = f"{server.inference_url}/v2/models/{server.model}/infer"

    def one_image(session: requests.Session, index: int) -> requests.Response:
        return session.post(server.prediction_url(), data=pngs[index % len(pngs)], headers=headers, timeout=120)

    def v2_batch(session: requests.Session, index: int) -> requests.Response:
        data = [encoded[(index * PER_V2_REQUEST + k) % len(encoded)] for k in range(PER_V2_REQUEST)]
        return session.post(v2_url, json={"inputs": [{"name": "image", "datatype": "BYTES", "shape": [PER_V2_REQUEST], "data": data}]},
                            headers=headers, timeout=120)

    return {"1 image": one_image, f"{PER_V2_REQUEST}-image v2": v2_batch}


def _cpu_seconds() -> dict[str, float]:
    """User+system CPU seconds so far of each server role and of this client process."""
    totals = {role: 0.0 for role in ROLES.values()} | {"client": sum(psutil.Process().cpu_times()[:2])}
    for process in psutil.process_iter(["cmdline"]):
        command = " ".join(process.info["cmdline"] or [])
        role = next((name for marker, name in ROLES.items() if marker in command), None)
        if role:
            try:
                totals[role] += sum(process.cpu_times()[:2])
            except psutil.Error:
                pass
    return totals


def measure(server: server_state.Server, pngs: list[bytes], total: int, kinds: tuple[str, ...]) -> dict:
    """Rows per request kind and concurrency; at the largest concurrency, where the CPU went (ms per image)."""
    try:
        rows = {}
        for kind, send in senders(server, pngs).items():
            if kind not in kinds:
                continue
            per_request = 1 if kind == "1 image" else PER_V2_REQUEST
            count = total if per_request == 1 else max(total // 8, 32)
            over_http(send, 8, 24, per_request)  # warm-up
            rows[kind] = {c: over_http(send, c, count, per_request) for c in CONCURRENCY[:-1]}
            before = _cpu_seconds()
            rows[kind][CONCURRENCY[-1]] = over_http(send, CONCURRENCY[-1], count, per_request)
            after = _cpu_seconds()
            images = count * per_request
            rows[kind][CONCURRENCY[-1]]["cpu_ms_per_image"] = {role: round((after[role] - before[role]) / images * 1000, 3)
                                                               for role in after if after[role] > before[role]}
        return rows
    finally:
        server_state.stop()


def table(results: dict) -> str:
    lines = ["| setup | request | C | images/s | p50 ms | p99 ms | errors |", "|---|---|---|---|---|---|---|"]
    for setup, kinds in results.items():
        for kind, rows in kinds.items():
            for concurrency, row in rows.items():
                lines.append(f"| {setup} | {kind} | {concurrency} | {row['images_per_s']} | {row['p50_ms']} | {row['p99_ms']} | {row['errors']} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", type=Path, default=REFERENCE_PIPELINE)
    parser.add_argument("--requests", type=int, default=400, help="one-image requests per front and concurrency (v2 requests: an eighth)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/serve.json"))
    args = parser.parse_args()
    os.environ["PURIFIER_SERVE_DIR"] = tempfile.mkdtemp(prefix="purifier-bench-")
    bundle = load_bundle(args.bundle)
    pngs = [encode_png(image) for image in load_dataset("fashion-mnist", "test").images[:512]]
    kinds = ("1 image", f"{PER_V2_REQUEST}-image v2")

    service = PurificationService.from_bundle(bundle.path)
    in_process(service, pngs, 8, 64, 1)  # warm-up
    results = {"a: in-process ONNX Runtime": {
        kind: {c: in_process(service, pngs, c, args.requests if per == 1 else max(args.requests // 8, 32), per) for c in CONCURRENCY}
        for kind, per in zip(kinds, (1, PER_V2_REQUEST))}}
    results["b: TorchServe front"] = measure(torchserve.serve(bundle.path, port=PORT), pngs, args.requests, kinds)
    results["c: KServe front"] = measure(serve_kserve(bundle.path, port=PORT + 10), pngs, args.requests, kinds)
    results["d: TorchServe, eager handler"] = measure(
        torchserve.serve(bundle.path, port=PORT + 20, handler=Path(__file__).with_name("eager_handler.py"), batching=torchserve.Batching(1, 0)),
        pngs, args.requests, kinds[:1])
    top = CONCURRENCY[-1]
    ratios = {f"{front[0]}/a, {kind}, C={top}": round(results[front][kind][top]["images_per_s"] / results["a: in-process ONNX Runtime"][kind][top]["images_per_s"], 2)
              for front in ("b: TorchServe front", "c: KServe front") for kind in kinds}
    best = {kind: max(ratios[f"{front}/a, {kind}, C={top}"] for front in "bc") for kind in kinds}
    p99_at_1 = min(results[front][kinds[0]][1]["p99_ms"] for front in ("b: TorchServe front", "c: KServe front"))
    goal = {"best front >= 0.5x in-process, 1 image, C=32": best[kinds[0]] >= 0.5,
            "best front >= 0.8x in-process, 32-image v2, C=32": best[kinds[1]] >= 0.8, "p99 at C=1 <= 10 ms": p99_at_1 <= 10}
    report = {"bundle": bundle.name, "machine": f"{platform.machine()}, {os.cpu_count()} cpus", "requests": args.requests,
              "results": {setup: {kind: {str(c): row for c, row in rows.items()} for kind, rows in kinds_.items()} for setup, kinds_ in results.items()},
              "ratios": ratios, "best_p99_ms_at_1_client": p99_at_1, "goal": goal}
    print(table(results))
    for setup in list(results)[1:]:
        for kind, rows in results[setup].items():
            print(f"{setup}, {kind}, CPU ms per image at C={top}: {rows[top]['cpu_ms_per_image']}")
    print(json.dumps(ratios), json.dumps(goal))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
