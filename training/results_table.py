"""The table of docs/RESULTS.md, made from evaluation reports, never typed by hand.

    python -m training.results_table reports/fmnist-standard reports/fmnist-pgd-at ...

For each report: its headline figures (clean, per-image worst case at L∞ 0.1, L2 1.5 and, when
it was run, the joint-space threat; corruption mean), whether it followed the protocol, the evaluation's wall time, the bundle's
training wall time (all stages, from bundle.json), and the inference cost per image of the
defended model, measured here side by side for every row (PyTorch eager, batches of 100, the
fastest of 20 runs).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from purifier.bundle import load_bundle


def inference_ms_per_image(bundle_path: Path, batch: int = 100, repeats: int = 20) -> float:
    """Fastest of ``repeats`` runs of the defended model on a random batch, per image (least disturbed by other load)."""
    bundle = load_bundle(bundle_path)
    model = bundle.pipeline(seed=0) if bundle.has_purifier else bundle.classifier()
    images = torch.rand(batch, *bundle.input_shape, generator=torch.Generator().manual_seed(0))
    timings = []
    with torch.no_grad():
        model(images)  # warm-up
        for _ in range(repeats):
            began = time.perf_counter()
            model(images)
            timings.append((time.perf_counter() - began) / batch * 1000)
    return min(timings)


def row(report_dir: Path) -> dict:
    report = json.loads((report_dir / "report.json").read_text())
    bundle_path = Path(report.get("bundle_path") or Path("bundles") / report["bundle"])
    manifest = load_bundle(bundle_path).manifest
    head = report["headline"]
    return {
        "bundle": report["bundle"], "model": head["model"], "clean": head["clean"], "linf": head["linf_0.1_worst_case"],
        "l2": head["l2_1.5_worst_case"], "joint": next((v for k, v in head.items() if k.startswith("joint_")), None),
        "corruptions": head["corruption_mean"], "conformant": report["protocol"]["conformant"],
        "robust_images": report["protocol"]["robust_images"], "evaluation_min": report["wall_time_s"] / 60,
        "training_min": sum(record["wall_time_s"] for record in manifest["training"]) / 60,
        "inference_ms": inference_ms_per_image(bundle_path),
    }


def markdown(rows: list[dict]) -> str:
    lines = [
        "| bundle | clean | L∞ 0.1 worst case | L2 1.5 worst case | joint space worst case | corruptions mean | training (min) "
        "| inference (ms/image) | evaluation (min) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        flag = "" if r["conformant"] else " (not conformant)"
        joint = "—" if r["joint"] is None else f"{r['joint']:.2%}"
        lines.append(f"| `{r['bundle']}`{flag} | {r['clean']:.2%} | {r['linf']:.2%} | {r['l2']:.2%} | {joint} | {r['corruptions']:.2%} "
                     f"| {r['training_min']:.0f} | {r['inference_ms']:.3f} | {r['evaluation_min']:.0f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("reports", type=Path, nargs="+", help="report directories written by 'purifier evaluate'")
    args = parser.parse_args()
    print(markdown([row(path) for path in args.reports]))


if __name__ == "__main__":
    main()
