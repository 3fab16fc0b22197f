"""The certified-robustness table of docs/RESULTS.md, made from ``purifier certify`` reports.

    python -m evaluation.certified_table reports/fmnist-denoiser-0.25-certified reports/fmnist-noise-0.25-certified ...

One row per report: σ, certified accuracy at L2 radii 0, 0.25, 0.5, 0.75 and 1.0 with 95% Wilson
intervals, the abstention rate, the soundness check (contradicted of attacked) and the wall time.
Then, for each σ with two reports, a paired comparison at every radius both can certify on the same
images (exact McNemar on "correct and certified at least to r"), the first report named against the second.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from evaluation.stats import format_p, mcnemar
from purifier.smoothing import largest_radius


def certified_at(report: dict, radius: float) -> list[bool]:
    """Per image: the smoothed prediction is right and certified to at least ``radius``."""
    return [p == y and r is not None and r >= radius for p, y, r in zip(report["predictions"], report["labels"], report["radii"])]


def row(report: dict) -> str:
    cells = []
    for radius, value in report["accuracy_at_radius"].items():
        low, high = report["intervals"][radius]
        cells.append(f"{value:.1%} [{low:.1%}, {high:.1%}]")
    check = report.get("soundness")
    soundness = f"{check['contradicted']} of {check['attacked']} (p = {format_p(check['p_value'])})" if check else "not run"
    flag = "" if report["protocol"]["conformant"] else " (not protocol-conformant)"
    return (f"| {report['bundle']}{flag} | {report['sigma']:g} | " + " | ".join(cells) + f" | {report['abstention_rate']:.1%} | {soundness} | "
            f"{report['wall_time_s'] / 60:.0f} |")


def comparisons(reports: list[dict]) -> list[str]:
    """For each σ with two reports: the first against the second at every radius."""
    lines = []
    for sigma in dict.fromkeys(r["sigma"] for r in reports):
        pair = [r for r in reports if r["sigma"] == sigma]
        if len(pair) != 2:
            continue
        a, b = pair
        if a["labels"] != b["labels"]:
            raise SystemExit(f"{a['bundle']} and {b['bundle']} were certified on different images; a paired test needs the same ones")
        for radius in a["accuracy_at_radius"]:
            if float(radius) > min(largest_radius(r["sigma"], r["n"], r["alpha"]) for r in pair):
                continue  # nothing can be certified there: 0 against 0
            test = mcnemar(certified_at(a, float(radius)), certified_at(b, float(radius)))
            difference = a["accuracy_at_radius"][radius] - b["accuracy_at_radius"][radius]
            lines.append(f"- σ = {sigma:g}, r = {radius}: {a['bundle']} − {b['bundle']} = {difference * 100:+.1f} points; "
                         + test.describe(a["bundle"], b["bundle"]) + ".")
    return lines


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("reports", nargs="+", type=Path, help="report directories written by 'purifier certify'")
    args = parser.parse_args(argv)
    reports = []
    for directory in args.reports:
        path = directory / "report.json"
        if not path.exists():
            raise SystemExit(f"{path} does not exist; run 'purifier certify BUNDLE --out {directory}' first")
        reports.append(json.loads(path.read_text()))
    radii = " | ".join(f"r = {radius}" for radius in reports[0]["accuracy_at_radius"])
    print(f"| system | σ | {radii} | abstained | soundness: contradicted | minutes |")
    print("|---|---|" + "---|" * len(reports[0]["accuracy_at_radius"]) + "---|---|---|")
    for report in reports:
        print(row(report))
    lines = comparisons(reports)
    if lines:
        print("\n" + "\n".join(lines))


if __name__ == "__main__":
    main()
