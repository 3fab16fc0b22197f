"""Training-step throughput by numeric precision, measured side by side in one run.

One step of AToP fine-tuning, the most expensive training step here: PGD-5 through random
transform → purifier → frozen classifier crafts x', then the purifier is updated on
L1(g(t(x')), x) + CE(f(g(t(x'))), y). Configurations: fp32; bf16 autocast (fp32 master weights);
bf16 + channels_last; bf16 + channels_last + torch.compile. For the default U-Net (16,32,64) and
a wide one (32,64,128). Prints images/s and the ratio to fp32, and writes JSON.

    python benchmarks/training_precision.py [--batch 128] [--seconds 20] [--out benchmarks/results/training_precision.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch
from torch.nn import functional as F

from evaluation.attacks import pgd
from purifier.assets import REFERENCE_PIPELINE
from purifier.bundle import load_bundle
from purifier.data import load_split
from purifier.models import PURIFIERS, build
from purifier.pipeline import Pipeline
from training.precision import autocast, prepare

CONFIGURATIONS = {
    "fp32": ("fp32", False, False),
    "bf16": ("bf16", False, False),
    "bf16+channels_last": ("bf16", True, False),
    "bf16+channels_last+compile": ("bf16", True, True),
}


def throughput(widths: tuple[int, ...], precision: str, channels_last: bool, compiled: bool, images, labels, seconds: float) -> float:
    """Images/s of AToP fine-tuning steps over ``seconds`` (after two warm-up steps)."""
    bundle = load_bundle(REFERENCE_PIPELINE)
    classifier = bundle.classifier().requires_grad_(False)
    purifier = build(PURIFIERS, "unet", {"in_channels": 1, "widths": list(widths)})
    if channels_last:
        prepare("bf16", classifier, purifier)
    step_purifier = torch.compile(purifier) if compiled else purifier
    pipeline = Pipeline(classifier, step_purifier, bundle.transform).eval()
    optimizer = torch.optim.Adam(purifier.parameters(), lr=1e-4)
    generator = torch.Generator().manual_seed(0)

    def step():
        with autocast(precision):
            adversarial = pgd(pipeline, images, labels, 0.1, steps=5, generator=generator, keep_best=False)
            purified = pipeline.purify(adversarial)
            loss = F.l1_loss(purified.float(), images) + F.cross_entropy(classifier(purified).float(), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    step(), step()
    count, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        step()
        count += 1
    return count * len(labels) / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--seconds", type=float, default=20.0, help="timed seconds per configuration")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/training_precision.json"))
    args = parser.parse_args()
    _, images, labels = load_split("fashion-mnist", None, "train", args.batch)
    results = {}
    for widths in ((16, 32, 64), (32, 64, 128)):
        row = {}
        for name, (precision, channels_last, compiled) in CONFIGURATIONS.items():
            row[name] = round(throughput(widths, precision, channels_last, compiled, images, labels, args.seconds), 1)
            print(f"U-Net {widths}: {name:<28} {row[name]:>8.1f} images/s  ({row[name] / row['fp32']:.2f}× fp32)", flush=True)
        results[",".join(map(str, widths))] = row
    report = {"step": "AToP fine-tuning step, PGD-5 through the pipeline + purifier update", "batch": args.batch,
              "threads": torch.get_num_threads(), "torch": torch.__version__, "machine": platform.processor() or platform.machine(),
              "images_per_s": results}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
