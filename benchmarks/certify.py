"""Latency of a certified classification beside a plain one, in one run, on real Fashion-MNIST PNGs,
for a randomized-smoothing bundle (gaussian transform; default bundles/fmnist-denoiser-0.25).

  (a) in process: PurificationService.classify and .certify per image on ONNX Runtime, certify at
      n = 128, 192 (the server's default), 256, 512 and 1,024 estimation draws after 32 selection draws:
      median and p99 ms, how many images were certified, and the largest radius n draws can certify
      at all, σ · Φ⁻¹(α^(1/n)) (every draw agreeing);
  (b) the TorchServe front at its default settings: one client sending one image per request,
      X-Certify off and on, p50/p99 ms.

    python benchmarks/certify.py [--bundle bundles/fmnist-denoiser-0.25] [--images 100] [--out benchmarks/results/certify.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import requests

from purifier.bundle import load_bundle
from purifier.data import load_dataset
from purifier.images import encode_png
from purifier.smoothing import largest_radius
from serving import server_state, torchserve
from serving.service import CertifySettings, PurificationService

SAMPLES = (128, 192, 256, 512, 1024)
PORT = 18480


def percentiles(seconds: list[float]) -> dict:
    milliseconds = np.array(seconds) * 1000
    return {"p50_ms": round(float(np.percentile(milliseconds, 50)), 1), "p99_ms": round(float(np.percentile(milliseconds, 99)), 1)}


def in_process(service: PurificationService, images: np.ndarray, settings: CertifySettings | None) -> dict:
    """Per-image latency of classify (``settings`` None) or certify, and for certify how many images were certified."""
    latencies, certified = [], 0
    for image in images:
        began = time.perf_counter()
        if settings is None:
            service.run(image[None])
        else:
            certified += service.certify(image[None], settings)[0].prediction is not None
        latencies.append(time.perf_counter() - began)
    row = percentiles(latencies)
    if settings is not None:
        sigma = service.bundle.transform.noise_std
        row |= {"certified": f"{certified}/{len(images)}", "max_radius": round(largest_radius(sigma, settings.samples, settings.alpha), 3)}
    return row


def over_torchserve(bundle_path: Path, pngs: list[bytes]) -> dict:
    """One client, one PNG per request, certify off then on, against TorchServe at the server's default certify settings."""
    server = torchserve.serve(bundle_path, port=PORT, seed=0)
    try:
        keys = server_state.read_keys()
        headers = {"Authorization": f"Bearer {keys.inference}"} if keys else {}
        rows = {}
        with requests.Session() as session:
            for name, extra in (("certify off", {}), ("certify on", {"X-Certify": "true"})):
                for png in pngs[:8]:  # warm-up
                    session.put(server.prediction_url(), data=png, headers=headers | extra, timeout=60).raise_for_status()
                latencies = []
                for png in pngs:
                    began = time.perf_counter()
                    session.put(server.prediction_url(), data=png, headers=headers | extra, timeout=60).raise_for_status()
                    latencies.append(time.perf_counter() - began)
                rows[name] = percentiles(latencies)
        return rows
    finally:
        server_state.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", type=Path, default=Path("bundles/fmnist-denoiser-0.25"))
    parser.add_argument("--images", type=int, default=100)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/certify.json"))
    args = parser.parse_args()
    os.environ["PURIFIER_SERVE_DIR"] = tempfile.mkdtemp(prefix="purifier-bench-")
    bundle = load_bundle(args.bundle)
    images = load_dataset("fashion-mnist", "test").images[: args.images]
    service = PurificationService.from_bundle(bundle.path, seed=0)
    default = CertifySettings()
    in_process(service, images[:8], default)  # warm-up
    rows = {"classify": in_process(service, images, None)}
    for samples in SAMPLES:
        rows[f"certify, n0 {default.selection} + n {samples}"] = in_process(
            service, images, CertifySettings(selection=default.selection, samples=samples, alpha=default.alpha, batch=default.selection + samples))
    served = over_torchserve(bundle.path, [encode_png(image) for image in images])
    report = {"bundle": bundle.name, "sigma": bundle.transform.noise_std, "machine": f"{platform.machine()}, {os.cpu_count()} cpus",
              "images": args.images, "server_default": {"selection": default.selection, "samples": default.samples, "alpha": default.alpha},
              "in_process": rows, "torchserve": served,
              "certify_over_classify_p50": round(served["certify on"]["p50_ms"] / served["certify off"]["p50_ms"], 1)}
    lines = ["| setup | p50 ms | p99 ms | certified | largest radius |", "|---|---|---|---|---|"]
    lines += [f"| (a) {name} | {row['p50_ms']} | {row['p99_ms']} | {row.get('certified', '')} | {row.get('max_radius', '')} |" for name, row in rows.items()]
    lines += [f"| (b) TorchServe, {name} | {row['p50_ms']} | {row['p99_ms']} | | |" for name, row in served.items()]
    print("\n".join(lines))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
