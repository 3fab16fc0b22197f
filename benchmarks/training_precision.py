"""Training-step throughput by numeric precision, measured side by side in one run.

Two steps:
- AToP fine-tuning, the most expensive training step here: PGD-5 through random transform → purifier
  → frozen classifier crafts x', then the purifier is updated on L1(g(t(x')), x) + CE(f(g(t(x'))), y);
  for the default U-Net (16,32,64) and a wide one (32,64,128);
- TRADES training of a classifier alone (the AT controls): PGD-7 on the KL term crafts x', then
  CE(f(x), y) + 6 · KL(f(x) ‖ f(x')); for the default ResNet (16,32,64) and the widened one (43,86,172).
Configurations: fp32; bf16 autocast (fp32 master weights); bf16 + channels_last; bf16 + channels_last +
torch.compile. Prints images/s and the ratio to fp32, and writes JSON with the CPU's model and matrix-unit
flags (the ratio depends on them: AMX, or AVX-512 bf16 only).

    python benchmarks/training_precision.py [--batch 128] [--seconds 20] [--out benchmarks/results/training_precision.json]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from torch.nn import functional as F

from evaluation.attacks import pgd
from purifier.assets import REFERENCE_PIPELINE
from purifier.bundle import load_bundle
from purifier.data import load_split
from purifier.machine import cpu_model_and_matrix_flags
from purifier.models import CLASSIFIERS, PURIFIERS, build
from purifier.pipeline import Pipeline
from training.adversarial import trades_loss
from training.precision import autocast, prepare

CONFIGURATIONS = {
    "fp32": ("fp32", False, False),
    "bf16": ("bf16", False, False),
    "bf16+channels_last": ("bf16", True, False),
    "bf16+channels_last+compile": ("bf16", True, True),
}


def atop_step(widths: tuple[int, ...], precision: str, channels_last: bool, compiled: bool, images, labels):
    """One AToP fine-tuning step of a fresh U-Net of ``widths`` in front of the reference pipeline's classifier."""
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

    return step


def trades_step(widths: tuple[int, ...], precision: str, channels_last: bool, compiled: bool, images, labels):
    """One TRADES (β = 6, PGD-7) step of a fresh ResNet classifier of ``widths``."""
    classifier = build(CLASSIFIERS, "resnet_small", {"in_channels": 1, "num_classes": 10, "widths": list(widths)})
    if channels_last:
        prepare("bf16", classifier)
    model = torch.compile(classifier) if compiled else classifier
    optimizer = torch.optim.SGD(classifier.parameters(), lr=0.01, momentum=0.9)
    generator = torch.Generator().manual_seed(0)

    def step():
        with autocast(precision):
            loss, _ = trades_loss(model, images, labels, 0.1, steps=7, beta=6.0, generator=generator)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


STEPS = {"atop": (atop_step, ((16, 32, 64), (32, 64, 128))), "trades": (trades_step, ((16, 32, 64), (43, 86, 172)))}


def throughput(step, seconds: float, batch: int) -> float:
    """Images/s of ``step`` over ``seconds`` (after two warm-up steps)."""
    step(), step()
    count, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        step()
        count += 1
    return count * batch / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--seconds", type=float, default=20.0, help="timed seconds per configuration")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/training_precision.json"))
    args = parser.parse_args()
    _, images, labels = load_split("fashion-mnist", None, "train", args.batch)
    results = {}
    for step_name, (make_step, sizes) in STEPS.items():
        results[step_name] = {}
        for widths in sizes:
            row = {}
            for name, (precision, channels_last, compiled) in CONFIGURATIONS.items():
                step = make_step(widths, precision, channels_last, compiled, images, labels)
                row[name] = round(throughput(step, args.seconds, len(labels)), 1)
                print(f"{step_name} {widths}: {name:<28} {row[name]:>8.1f} images/s  ({row[name] / row['fp32']:.2f}× fp32)", flush=True)
            results[step_name][",".join(map(str, widths))] = row
    cpu, flags = cpu_model_and_matrix_flags()
    report = {"steps": {"atop": "AToP fine-tuning step, PGD-5 through the pipeline + purifier update (U-Net widths)",
                        "trades": "TRADES classifier step, PGD-7 on the KL term, beta 6 (ResNet widths)"},
              "batch": args.batch, "threads": torch.get_num_threads(), "torch": torch.__version__, "cpu": cpu,
              "matrix_flags": [flag for flag, present in flags.items() if present], "images_per_s": results}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
