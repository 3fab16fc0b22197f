"""Batch purification against the bare pipeline, measured side by side in one run.

On N real Fashion-MNIST test images written as PNG files:
  * bare pipeline: ONNX Runtime on already-decoded images, batches of 256 (no files, no PNGs);
  * the batch job in this process (`purify_folder`: decode, purify, classify, encode, write);
  * `purifier purify` as a command, 1 process, and under `torchrun` with 2 processes
    (one thread each), timed from start to exit (start-up included).
Prints images/s and the ratio to the bare pipeline; writes JSON.

    python benchmarks/batch.py [--images 4000] [--out benchmarks/results/batch.json]
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
from PIL import Image

from purifier.assets import REFERENCE_PIPELINE
from purifier.data import load_dataset
from serving.batch import purify_folder
from serving.service import PurificationService

ROOT = Path(__file__).resolve().parent.parent


def bare_pipeline(images: np.ndarray, batch: int = 256) -> float:
    service = PurificationService.from_bundle(REFERENCE_PIPELINE, seed=0)
    service.run(images[:batch])
    began = time.perf_counter()
    for start in range(0, len(images), batch):
        service.run(images[start:start + batch])
    return len(images) / (time.perf_counter() - began)


def command(arguments: list[str], images: int, env: dict) -> float:
    began = time.perf_counter()
    subprocess.run(arguments, cwd=ROOT, env=env, check=True, capture_output=True)
    return images / (time.perf_counter() - began)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=4000)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/batch.json"))
    args = parser.parse_args()
    images = load_dataset("fashion-mnist", "test").images[: args.images]
    work = Path(tempfile.mkdtemp(prefix="purifier-batch-bench-"))
    try:
        source = work / "src"
        for index, image in enumerate(images):
            folder = source / f"part-{index // 1000}"
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(image[..., 0]).save(folder / f"{index:05d}.png")
        rates = {"bare pipeline (decoded, batch 256)": bare_pipeline(images)}
        job = purify_folder(source, work / "in-process", batch_size=256)
        rates["batch job, in process"] = job.images_per_s
        env = {**os.environ}
        rates["purifier purify, 1 process (incl. start-up)"] = command([sys.executable, "-m", "cli.main", "purify", str(source), str(work / "one")], len(images), env)
        torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent))
        rates["purifier purify, torchrun 2 processes × 1 thread (incl. start-up)"] = command(
            [torchrun, "--standalone", "--nproc-per-node", "2", "--no-python", sys.executable, "-m", "cli.main", "purify", str(source), str(work / "two")],
            len(images), {**env, "OMP_NUM_THREADS": "1"})
        identical = all((work / "one" / p.relative_to(work / "two")).read_bytes() == p.read_bytes() for p in (work / "two").rglob("*.png"))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    bare = rates["bare pipeline (decoded, batch 256)"]
    print("| setup | images/s | ratio to bare pipeline |\n|---|---|---|")
    for name, rate in rates.items():
        print(f"| {name} | {rate:.0f} | {rate / bare:.2f} |")
    print(f"2-process output identical to 1-process output: {identical}")
    report = {"images": len(images), "machine": f"{platform.machine()}, {os.cpu_count()} cpus",
              "images_per_s": {k: round(v, 1) for k, v in rates.items()}, "ratio_to_bare": {k: round(v / bare, 2) for k, v in rates.items()},
              "two_process_output_identical": identical}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
