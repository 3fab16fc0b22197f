"""The declared rule that picks the shipped default (evaluation.ranking): its order, its refusals, and that the
bundles the package ships are still the rule's winners among the committed reports."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from evaluation.ranking import install, rank, winners
from purifier.assets import CHECKOUT_BUNDLES, DEFAULT_BUNDLE_DIR, DEFAULT_PURIFIER_DIR
from purifier.bundle import load_bundle
from purifier.errors import PurifierError

REPORTS = CHECKOUT_BUNDLES.parent / "reports"


def _report(root: Path, name: str, linf: float, l2: float, clean: float, draws: int | None = 1, model: str = "pipeline") -> Path:
    """A report directory holding only the headline the rule reads; draws None: written before worst of N existed."""
    head = {"model": model, "clean": clean + 0.1, "linf_0.1_worst_case": linf + 0.1, "l2_1.5_worst_case": l2 + 0.1}
    if draws is not None:
        head.update(draws=draws, clean_worst_of_n=clean, **{"linf_0.1_worst_of_n": linf, "l2_1.5_worst_of_n": l2})
    (root / name).mkdir()
    report = {"bundle": name, "headline": head, "protocol": {"images": 500}, "clean": {"images": 10000}}
    (root / name / "report.json").write_text(json.dumps(report))
    return root / name


def test_the_rule_orders_by_linf_then_l2_then_clean_on_the_worst_of_n(tmp_path):
    reports = [_report(tmp_path, "a", 0.5, 0.4, 0.9), _report(tmp_path, "b", 0.5, 0.4, 0.95, draws=10),
               _report(tmp_path, "c", 0.5, 0.6, 0.5, model="classifier"), _report(tmp_path, "d", 0.7, 0.1, 0.1)]
    (tmp_path / "certified").mkdir()
    (tmp_path / "certified" / "report.json").write_text(json.dumps({"certified": {}}))  # a certification report: not ranked
    standings = rank([*reports, tmp_path / "certified"])
    assert [s.bundle for s in standings] == ["d", "c", "b", "a"]
    assert standings[2].key == (0.5, 0.4, 0.95)  # the worst-of-N figures, not the single draw's
    assert {target.name: s.bundle for target, s in winners(standings).items()} == {"fmnist-default": "d", "fmnist-purifier": "d"}
    assert winners(standings[1:2] + standings[2:])[DEFAULT_PURIFIER_DIR].bundle == "b"  # the best with a purifier
    with pytest.raises(PurifierError, match="no report among those given is of a system with a purifier"):
        winners([standings[1]])


def test_a_one_draw_upper_bound_in_the_lead_leaves_the_ranking_undecided(tmp_path):
    with pytest.raises(PurifierError, match="upper bound; rerun its evaluation"):
        rank([_report(tmp_path, "judged", 0.5, 0.4, 0.9), _report(tmp_path, "old", 0.6, 0.4, 0.9, draws=None)])
    assert rank([_report(tmp_path, "low", 0.3, 0.4, 0.9, draws=None), tmp_path / "judged"])[1].upper_bound
    with pytest.raises(PurifierError, match="no finished report"):
        rank([tmp_path / "judged", tmp_path / "missing"])


def test_install_copies_the_winner_under_the_served_name(tmp_path):
    standings = rank([REPORTS / "fmnist-pgd-at", REPORTS / "fmnist-standard"])
    install(standings[0], standings, tmp_path / "fmnist-default")
    installed = load_bundle(tmp_path / "fmnist-default")  # every sha256 verified
    assert installed.name == "fmnist-default" and installed.manifest["selection"]["selected"] == "fmnist-pgd-at"
    assert installed.manifest["files"] == load_bundle(CHECKOUT_BUNDLES / "fmnist-pgd-at").manifest["files"]
    assert not list(tmp_path.glob(".*"))  # nothing staged is left behind


def test_the_shipped_bundles_are_the_winners_of_the_committed_reports():
    """If a new report outranks the shipped default, this fails until 'python -m evaluation.ranking reports/… --install' ships it."""
    finished = [path.parent for path in REPORTS.glob("fmnist-*/report.json")]
    for target, standing in winners(rank(finished)).items():
        shipped, source = load_bundle(target), load_bundle(CHECKOUT_BUNDLES / standing.bundle)
        assert shipped.manifest["selection"]["selected"] == standing.bundle, target.name
        weights = [name for name in source.manifest["files"] if name.endswith(".safetensors")]
        assert {name: shipped.manifest["files"][name] for name in weights} == {name: source.manifest["files"][name] for name in weights}
    assert DEFAULT_BUNDLE_DIR.name == "fmnist-default"
