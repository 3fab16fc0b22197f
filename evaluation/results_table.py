"""The table of docs/RESULTS.md, made from evaluation reports, never typed by hand.

    python -m evaluation.results_table reports/fmnist-standard reports/fmnist-pgd-at ...

For each report: its headline figures with 95% Wilson intervals (clean, per-image worst case at
L∞ 0.1, L2 1.5 and, when it was run, the joint-space threat; for a stochastic pipeline both on
one draw and on the worst of N draws, the figure to quote), the corruption mean, how many images
the gradient-free attacks broke that the gradient attacks left standing, whether it followed the
protocol, the evaluation's wall time, the bundle's training wall time (all stages, from
bundle.json), and the inference cost per image of the defended model, measured here side by side
for every row (PyTorch eager, batches of 100, the fastest of 20 runs).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from evaluation.stats import with_interval
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


def row(report_dir: Path, timing: bool = True) -> dict:
    """One table row from a report directory; figures a report made before worst of N existed lacks are None."""
    report = json.loads((report_dir / "report.json").read_text())
    bundle_path = Path(report.get("bundle_path") or Path("bundles") / report["bundle"])
    manifest = load_bundle(bundle_path).manifest
    head = report["headline"]
    masking = head.get("gradient_masking") or {}
    return {
        "bundle": report["bundle"], "model": head["model"], "draws": head.get("draws"),
        "clean": head["clean"], "clean_worst_of_n": head.get("clean_worst_of_n"), "clean_images": report["clean"]["images"],
        "linf": head["linf_0.1_worst_case"], "linf_worst_of_n": head.get("linf_0.1_worst_of_n"),
        "l2": head["l2_1.5_worst_case"], "l2_worst_of_n": head.get("l2_1.5_worst_of_n"),
        "joint": next((v for k, v in head.items() if k.startswith("joint_") and k.endswith("_worst_of_n")),
                      next((v for k, v in head.items() if k.startswith("joint_") and k.endswith("_worst_case")), None)),
        "corruptions": head["corruption_mean"], "conformant": report["protocol"]["conformant"],
        "gradient_free_breaks": sum((masking.get("worst_of_n") or {}).values()) if masking else None,
        "robust_images": report["protocol"]["robust_images"], "evaluation_min": report["wall_time_s"] / 60,
        "added_min": report.get("added_wall_time_s", 0.0) / 60,
        "training_min": sum(record["wall_time_s"] for record in manifest["training"]) / 60,
        "inference_ms": inference_ms_per_image(bundle_path) if timing else None,
    }


def _figure(value: float | None, images: int) -> str:
    """'46.2% [41.9, 50.6]': a figure with its 95% Wilson interval, or — when the report lacks it."""
    return "—" if value is None else with_interval(value, images)


def markdown(rows: list[dict]) -> str:
    lines = [
        "| bundle | draws N | clean, one draw | clean, worst of N | L∞ 0.1, one draw | **L∞ 0.1, worst of N** | L2 1.5, one draw "
        "| **L2 1.5, worst of N** | joint space | corruptions mean | gradient-free breaks | training (min) | inference (ms/image) "
        "| evaluation (min) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        flag = "" if r["conformant"] else " (not conformant)"
        n, clean_n = r["robust_images"], r["clean_images"]
        draws = "—" if r["draws"] is None else str(r["draws"])
        breaks = "—" if r["gradient_free_breaks"] is None else str(r["gradient_free_breaks"])
        inference = "—" if r["inference_ms"] is None else f"{r['inference_ms']:.3f}"
        added = f" (+{r['added_min']:.0f})" if r["added_min"] else ""
        lines.append(
            f"| `{r['bundle']}`{flag} | {draws} | {_figure(r['clean'], clean_n)} | {_figure(r['clean_worst_of_n'], clean_n)} "
            f"| {_figure(r['linf'], n)} | {_figure(r['linf_worst_of_n'], n)} | {_figure(r['l2'], n)} | {_figure(r['l2_worst_of_n'], n)} "
            f"| {_figure(r['joint'], n)} | {r['corruptions']:.2%} | {breaks} | {r['training_min']:.0f} | {inference} "
            f"| {r['evaluation_min']:.0f}{added} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("reports", type=Path, nargs="+", help="report directories written by 'purifier evaluate'")
    args = parser.parse_args()
    print(markdown([row(path) for path in args.reports]))


if __name__ == "__main__":
    main()
