"""The declared rule that picks the served default, applied to evaluation reports.

    python -m evaluation.ranking REPORT_DIR...             # the standings and the winners
    python -m evaluation.ranking REPORT_DIR... --install   # and ship the winners in the package
    scripts/results.sh default                             # the latter, over every finished report

Systems are ordered by the accuracy an attacker faces as served, on the worst of N transform
draws: first at L∞ 0.1, then at L2 1.5, then on clean images (higher first, lexicographically).
A stochastic pipeline whose report still holds only one draw enters with that figure, an upper
bound of its worst of N; should such an upper bound reach the leader, the ranking is undecided and
names the report to re-judge. Reports that are not robustness evaluations (certification reports)
are skipped. ``--install`` copies the winner's bundle into the package as ``fmnist-default`` (what
``purifier serve`` serves, under that name) and the best system with a purifier as ``fmnist-purifier``
(what ``purifier purify`` uses), each with the standings that chose it; ``tests/test_ranking.py``
checks that both are still the winners of the committed reports.
"""

from __future__ import annotations

import argparse
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

from evaluation.compare import compare
from evaluation.stats import format_p, with_interval
from purifier.assets import DEFAULT_BUNDLE_DIR, DEFAULT_PURIFIER_DIR
from purifier.bundle import load_bundle, update_manifest
from purifier.errors import PurifierError
from purifier.fsutil import publish_dir, staging_dir

RULE = "worst-of-N accuracy at L∞ 0.1, then at L2 1.5, then clean (higher first)"


@dataclass(frozen=True)
class Standing:
    """One system's figures under the rule; ``upper_bound`` when they are one draw of a stochastic pipeline."""
    report: Path
    bundle: str
    bundle_path: Path
    purifies: bool
    linf: float
    l2: float
    clean: float
    draws: int
    upper_bound: bool
    attacked: int  # images behind the L∞ and L2 figures
    clean_images: int

    @property
    def key(self) -> tuple[float, float, float]:
        return self.linf, self.l2, self.clean


def standing(report_dir: Path) -> Standing | None:
    """The rule's figures from one report directory; None for a certification report."""
    path = Path(report_dir) / "report.json"
    if not path.is_file():
        raise PurifierError(f"{report_dir} holds no finished report; finish its evaluation (scripts/results.sh) or leave it out")
    report = json.loads(path.read_text())
    head = report.get("headline")
    if head is None:
        return None
    judged = head.get("linf_0.1_worst_of_n") is not None
    pick = (lambda name: head[f"{name}_worst_of_n"]) if judged else (lambda name: head[f"{name}_worst_case"])
    return Standing(Path(report_dir), report["bundle"], Path(report.get("bundle_path") or Path("bundles") / report["bundle"]), head["model"] == "pipeline", pick("linf_0.1"), pick("l2_1.5"),
                    head["clean_worst_of_n"] if judged else head["clean"], head.get("draws") or 1, not judged,
                    report["protocol"]["images"], report["clean"]["images"])


def rank(report_dirs: list[Path]) -> list[Standing]:
    """Standings, best first under the rule; raises when an upper bound could still overtake the leader."""
    standings = sorted(filter(None, map(standing, report_dirs)), key=lambda s: s.key, reverse=True)
    if not standings:
        raise PurifierError("no robustness report among the directories given; pass report directories such as reports/fmnist-pgd-at")
    if standings[0].upper_bound:
        raise PurifierError(f"undecided: {standings[0].report} holds only one transform draw, an upper bound; "
                            f"rerun its evaluation (scripts/results.sh) so it is judged on the worst of N draws")
    return standings


def install(standing: Standing, standings: list[Standing], target: Path) -> None:
    """Copy ``standing``'s bundle to ``target`` (atomically) under the served name ``target.name``, recording why."""
    source = load_bundle(standing.bundle_path)
    staged = staging_dir(target)
    shutil.copytree(source.path, staged, dirs_exist_ok=True)
    selection = {"rule": RULE, "selected": standing.bundle, "report": str(standing.report),
                 "standings": [{"bundle": s.bundle, "linf_0.1": s.linf, "l2_1.5": s.l2, "clean": s.clean, "draws": s.draws,
                                "upper_bound": s.upper_bound} for s in standings]}
    update_manifest(load_bundle(staged), lambda manifest: manifest.update(name=target.name, selection=selection))
    publish_dir(staged, target)


def winners(standings: list[Standing]) -> dict[Path, Standing]:
    """Shipped directory -> the standing it must hold: the leader, and the leader among systems with a purifier."""
    purifying = next((s for s in standings if s.purifies), None)
    if purifying is None:
        raise PurifierError("no report among those given is of a system with a purifier; add one (e.g. reports/fmnist-jatp-pgd-at)")
    return {DEFAULT_BUNDLE_DIR: standings[0], DEFAULT_PURIFIER_DIR: purifying}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("reports", type=Path, nargs="+", help="report directories")
    parser.add_argument("--install", action="store_true", help="make the winners the shipped fmnist-default and fmnist-purifier")
    args = parser.parse_args()
    standings = rank(args.reports)
    leader = standings[0]
    print(f"rule: {RULE}")
    print(f"| rank | system | draws N | L∞ 0.1 | L2 1.5 | clean | L∞ 0.1 vs {leader.bundle}: exact McNemar p |")
    print("|---|---|---|---|---|---|---|")
    for place, entry in enumerate(standings, 1):
        bound = " (one draw: upper bound)" if entry.upper_bound else ""
        print(f"| {place} | `{entry.bundle}` | {entry.draws} | {with_interval(entry.linf, entry.attacked)}{bound} "
              f"| {with_interval(entry.l2, entry.attacked)} | {with_interval(entry.clean, entry.clean_images, 2)} "
              f"| {'' if entry is leader else _paired_p(leader, entry)} |")
    for target, standing in winners(standings).items():
        print(f"{target.name}: {standing.bundle} ({standing.report})")
        if args.install:
            install(standing, standings, target)


def _paired_p(leader: Standing, other: Standing) -> str:
    """The exact McNemar p of the two at L∞ 0.1 (worst of N), or why there is none."""
    try:
        rows = compare(leader.report, other.report)
    except PurifierError:
        return "n/a (report without per-image results)"
    return next(format_p(test.p_value) for threat, judged, _, _, test in rows if threat == "linf_0.1" and judged == "worst_of_n")


if __name__ == "__main__":
    main()
