"""Paired comparison of two evaluated systems on the same images: the test behind every
"A beats B" in docs/RESULTS.md.

    python -m evaluation.compare reports/fmnist-default reports/fmnist-pgd-at

For clean accuracy and each headline threat both reports ran, on one draw and on the worst of N
draws: both accuracies, the images right under only one of them, and the exact McNemar p-value
(``evaluation.stats``). For the corruption suite (one draw), each image's score is how many of the
30 corruption conditions it survives; the row gives the mean accuracy, the images that score higher
under each system, and the paired t-test of the mean. Both reports must come from the same images (the first
K test images).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from evaluation.stats import PairedTest, format_p, mcnemar, paired_t_test
from purifier.errors import PurifierError


def _outcomes(report: dict, path: Path) -> dict[str, dict[str, str]]:
    """threat -> {'single': bits, 'worst_of_n': bits} of the report's defended model, clean included."""
    model = report["headline"]["model"]
    if "per_image" not in report:
        raise PurifierError(f"{path} was written before per-image results were kept; rerun its 'purifier evaluate' command to rewrite it")
    clean = report["clean_per_image"][model]
    return {"clean": {"single": clean["single"], "worst_of_n": clean["all_draws"]}, **report["per_image"][model]}


def compare_corruptions(a: Path, b: Path) -> tuple[float, float, PairedTest]:
    """Mean corruption accuracy of A and of B, and the paired t-test on their per-image scores (conditions survived)."""
    scores = []
    for path in (a, b):
        report = json.loads((Path(path) / "report.json").read_text())
        conditions = report.get("corruption_per_image", {}).get(report["headline"]["model"])
        if not conditions:
            raise PurifierError(f"{path} was written before per-image corruption results were kept; "
                                "rerun its 'purifier evaluate' command (it redoes only the corruption suite)")
        scores.append([image.count("1") for image in zip(*conditions.values())])
    if len(scores[0]) != len(scores[1]):
        raise PurifierError(f"{a} and {b} ran the corruption suite on {len(scores[0])} and {len(scores[1])} images; compare reports of the same images")
    first, second = (sum(score) / (len(score) * len(conditions)) for score in scores)
    return first, second, paired_t_test(*scores)


def compare(a: Path, b: Path) -> list[tuple[str, str, float, float, PairedTest]]:
    """(threat, 'single' | 'worst_of_n', accuracy A, accuracy B, paired test) for every threat both reports hold."""
    reports = [json.loads((Path(path) / "report.json").read_text()) for path in (a, b)]
    outcomes = [_outcomes(report, Path(path)) for report, path in zip(reports, (a, b))]
    rows = []
    for threat in [t for t in outcomes[0] if t in outcomes[1]]:
        for judged in ("single", "worst_of_n"):
            first, second = outcomes[0][threat][judged], outcomes[1][threat][judged]
            if len(first) != len(second):
                raise PurifierError(f"{a} and {b} judged {threat} on {len(first)} and {len(second)} images; compare reports of the same images")
            test = mcnemar([c == "1" for c in first], [c == "1" for c in second])
            rows.append((threat, judged, first.count("1") / len(first), second.count("1") / len(second), test))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("a", type=Path, help="report directory of system A")
    parser.add_argument("b", type=Path, help="report directory of system B")
    args = parser.parse_args()
    names = [json.loads((path / "report.json").read_text())["bundle"] for path in (args.a, args.b)]
    print(f"| threat | judged | {names[0]} | {names[1]} | right only under {names[0]} | right only under {names[1]} | exact McNemar p |")
    print("|---|---|---|---|---|---|---|")
    for threat, judged, first, second, test in compare(args.a, args.b):
        label = "one draw" if judged == "single" else "worst of N"
        print(f"| {threat} | {label} | {first:.2%} | {second:.2%} | {test.only_a} | {test.only_b} | {format_p(test.p_value)} |")
    try:
        first, second, test = compare_corruptions(args.a, args.b)
    except PurifierError as error:
        print(f"\ncorruptions: no paired test: {error}")
        return
    print(f"| corruptions | one draw | {first:.2%} | {second:.2%} | {test.only_a} | {test.only_b} | {format_p(test.p_value)} (paired t) |")
    print("\ncorruptions: the images that survive more of the corruption conditions under each system; "
          "the p-value is the paired t-test of the mean over images.")


if __name__ == "__main__":
    main()
