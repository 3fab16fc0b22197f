"""Does bf16 autocast weaken adversarial training? The same short run in fp32 and in bf16, attacked alike.

``--precision bf16`` makes training steps 1.6-2.7x faster here (benchmarks/training_precision.py), and
tests/test_training.py checks that it reaches fp32's *clean* accuracy. Robustness is what adversarial
training is for, and bf16 also runs the attack that crafts the training examples, so this script
checks that too: it trains one classifier per precision (same seed, same images, same schedule), then
attacks both with the same fp32 PGD (random start, best iterate) on the same test images, and compares
them image by image (exact McNemar). Prints the comparison and writes JSON with the CPU it ran on.

    python benchmarks/adversarial_precision.py [--method pgd] [--limit 20000] [--epochs 3] [--images 2000]
        [--out benchmarks/results/adversarial_precision_METHOD.json]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from evaluation.attacks import pgd
from evaluation.stats import mcnemar, with_interval
from purifier.data import load_split
from purifier.machine import cpu_model_and_matrix_flags
from training.classifier import ClassifierConfig, train_classifier

PRECISIONS = ("fp32", "bf16")


def correct_under_pgd(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, eps: float, steps: int) -> list[bool]:
    """Per image: still right after fp32 PGD-``steps`` at L∞ ``eps`` (seeded random start, best iterate)."""
    outcomes = []
    for start in range(0, len(labels), 500):
        batch, targets = images[start:start + 500], labels[start:start + 500]
        adversarial = pgd(model, batch, targets, eps, steps=steps, generator=torch.Generator().manual_seed(start))
        with torch.no_grad():
            outcomes += (model(adversarial).argmax(1) == targets).tolist()
    return outcomes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--method", choices=("pgd", "trades"), default="pgd")
    parser.add_argument("--limit", type=int, default=20000, help="training images")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--images", type=int, default=2000, help="attacked test images")
    parser.add_argument("--steps", type=int, default=20, help="PGD steps of the attack")
    parser.add_argument("--out", type=Path, help="default: benchmarks/results/adversarial_precision_METHOD.json")
    args = parser.parse_args()
    args.out = args.out or Path(f"benchmarks/results/adversarial_precision_{args.method}.json")

    _, test_images, test_labels = load_split("fashion-mnist", None, "test")
    images, labels = test_images[:args.images], test_labels[:args.images]
    results = {}
    with tempfile.TemporaryDirectory() as work:
        for precision in PRECISIONS:
            began = time.perf_counter()
            bundle = train_classifier(ClassifierConfig(
                out=Path(work) / precision, method=args.method, eps=0.1, attack_steps=7, epochs=args.epochs, limit=args.limit,
                precision=precision, command=f"benchmarks/adversarial_precision.py ({precision})"))
            training_s = time.perf_counter() - began
            model = bundle.classifier().eval()
            results[precision] = {
                "training_s": round(training_s, 1),
                "clean": bundle.manifest["metrics"]["clean_accuracy_classifier"]["value"],
                "robust": correct_under_pgd(model, images, labels, 0.1, args.steps),
            }
    test = mcnemar(results["bf16"]["robust"], results["fp32"]["robust"])
    print(f"{args.method} adversarial training, {args.limit} images x {args.epochs} epochs; fp32 PGD-{args.steps} at L∞ 0.1 "
          f"on {args.images} test images")
    for precision in PRECISIONS:
        robust = results[precision]["robust"]
        print(f"  {precision}: clean {results[precision]['clean']:.2%} (10,000 images), robust "
              f"{with_interval(sum(robust) / len(robust), len(robust))}, trained in {results[precision]['training_s']:.0f} s")
    print(f"  bf16 vs fp32: {test.describe('bf16', 'fp32')}")
    cpu, flags = cpu_model_and_matrix_flags()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({
        "cpu": cpu, "matrix_flags": [flag for flag, present in flags.items() if present], "torch": torch.__version__, "threads": torch.get_num_threads(),
        "method": args.method, "training_images": args.limit, "epochs": args.epochs, "attack": f"fp32 PGD-{args.steps}, L∞ 0.1",
        "attacked_images": args.images,
        "results": {p: {"training_s": r["training_s"], "clean": r["clean"], "robust": sum(r["robust"]) / len(r["robust"])}
                    for p, r in results.items()},
        "paired": {"bf16_only": test.only_a, "fp32_only": test.only_b, "p_value": test.p_value},
    }, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
