"""`purifier evaluate` at smoke sizes: the report's files and invariants, resume, recording."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from torch import nn

from evaluation.evaluate import EvaluationConfig, evaluate
from evaluation.report import write_report
from purifier.assets import CHECKOUT_BUNDLES, REFERENCE_PIPELINE
from purifier.bundle import load_bundle
from purifier.errors import PurifierError

TINY = dict(images=8, clean_images=200, corruption_images=40, batch_size=8,
            transfer_from=(CHECKOUT_BUNDLES / "fmnist-standard", CHECKOUT_BUNDLES / "fmnist-pgd-at"))


class QuantisedInput(nn.Module):
    """A planted gradient-masking defence: the classifier behind input quantisation, whose gradient is zero almost everywhere."""

    def __init__(self, classifier: nn.Module) -> None:
        super().__init__()
        self.classifier = classifier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.round(x * 255) / 255)


@pytest.fixture(scope="module")
def report_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("evaluation")
    write_report(evaluate(REFERENCE_PIPELINE, out, EvaluationConfig.quick_run(**TINY)), out)
    return out


def test_report_files_and_invariants(report_dir):
    assert {p.name for p in report_dir.iterdir()} >= {"report.json", "report.md", "accuracy_vs_eps.png", "corruptions.png", "examples.png", "partial.json"}
    report = json.loads((report_dir / "report.json").read_text())
    assert set(report["robust"]) == {"classifier", "pipeline"} and report["protocol"]["conformant"] is False
    assert report["protocol"]["packages"]["pyautoattack"] == "0.2.0"
    for norms in report["robust"].values():
        for radii in norms.values():
            for attacks in radii.values():
                assert attacks["worst_case"] <= min(v for k, v in attacks.items() if k not in ("worst_case", "worst_of_n"))
    assert set(report["robust"]["pipeline"]["linf"]["0.1"]) == {
        "pgd", "bpda", "autoattack", "square", "transfer:fmnist-standard", "transfer:fmnist-pgd-at", "worst_case", "worst_of_n"}
    assert "transfer:fmnist-standard" not in report["robust"]["classifier"]["linf"]["0.1"]  # its own weights: white-box PGD already ran
    assert report["robust"]["classifier"]["linf"]["0.1"]["worst_case"] <= 0.125  # undefended: near 0
    assert len(report["corruptions"]["pipeline"]["per_type"]) == 10
    assert "Not protocol-conformant" in (report_dir / "report.md").read_text()


def test_later_attacks_only_spend_compute_on_unbroken_images(report_dir):
    results = json.loads((report_dir / "partial.json").read_text())["results"]
    for norm, eps in (("linf", "0.1"), ("l2", "1.5")):
        pgd, bpda = results[f"pipeline|pgd|{norm}|{eps}"], results[f"pipeline|bpda|{norm}|{eps}"]
        survivors = pgd["correct"]
        if norm == "linf":
            autoattack = results[f"pipeline|autoattack|{norm}|{eps}"]
            assert autoattack["attacked"] == sum(survivors)
            survivors = [a and b for a, b in zip(survivors, autoattack["correct"])]
        assert pgd["attacked"] == len(pgd["correct"]) and bpda["attacked"] == sum(survivors)
        assert not any(b and not s for b, s in zip(bpda["correct"], survivors))  # a broken image stays broken


def test_rerun_resumes_without_redoing_work(report_dir):
    before = json.loads((report_dir / "partial.json").read_text())
    evaluation = evaluate(REFERENCE_PIPELINE, report_dir, EvaluationConfig.quick_run(**TINY))
    for key, value in before["results"].items():
        if isinstance(value, dict) and "correct" in value:
            assert evaluation.results[key] == value  # nothing recomputed


def test_runs_saved_before_an_option_existed_still_resume(report_dir):
    partial = report_dir / "partial.json"
    saved = json.loads(partial.read_text())
    del saved["config"]["seed"]  # as if "seed" had been added after this run started (its value here is the default)
    partial.write_text(json.dumps(saved))
    evaluation = evaluate(REFERENCE_PIPELINE, report_dir, EvaluationConfig.quick_run(**TINY))
    assert evaluation.results["clean"] == saved["results"]["clean"]


def test_partial_results_follow_the_model_not_its_path(report_dir, tmp_path):
    before = json.loads((report_dir / "partial.json").read_text())
    moved = tmp_path / "moved"
    shutil.copytree(REFERENCE_PIPELINE, moved)
    assert evaluate(moved, report_dir, EvaluationConfig.quick_run(**TINY)).results["clean"] == before["results"]["clean"]
    with pytest.raises(PurifierError, match="another model"):
        evaluate(CHECKOUT_BUNDLES / "fmnist-pretrained", report_dir, EvaluationConfig.quick_run(**TINY))


def test_a_composed_bundle_reuses_the_attacks_on_its_classifier(report_dir, tmp_path):
    saved = json.loads((report_dir / "partial.json").read_text())
    on_classifier = {key: value for key, value in saved["results"].items() if key.startswith("classifier|")}
    out = tmp_path / "out"
    out.mkdir()
    (out / "partial.json").write_text(json.dumps({**saved, "results": {k: v for k, v in saved["results"].items() if k not in on_classifier}}))
    evaluation = evaluate(REFERENCE_PIPELINE, out, EvaluationConfig.quick_run(**TINY), reuse_classifier=report_dir)
    assert {key: evaluation.results[key] for key in on_classifier} == on_classifier  # taken, not run again
    assert write_report(evaluation, out)["protocol"]["classifier_attacks_from"] == str(report_dir)
    with pytest.raises(PurifierError, match="another classifier"):
        evaluate(CHECKOUT_BUNDLES / "fmnist-pgd-at", tmp_path / "other", EvaluationConfig.quick_run(**TINY), reuse_classifier=report_dir)


def test_partial_results_of_other_options_are_refused(report_dir):
    with pytest.raises(PurifierError, match="other options"):
        evaluate(REFERENCE_PIPELINE, report_dir, EvaluationConfig.quick_run(**{**TINY, "images": 16}))


@pytest.mark.parametrize("bundle,flow,match", [
    ("fmnist-flow", None, "has no classifier"),
    ("fmnist-standard", "fmnist-standard", "has no flow"),
])
def test_a_bundle_of_the_wrong_kind_is_refused_before_anything_is_written(bundle, flow, match, tmp_path):
    config = EvaluationConfig.quick_run(**TINY, joint_flow=flow and CHECKOUT_BUNDLES / flow)
    with pytest.raises(PurifierError, match=match):
        evaluate(CHECKOUT_BUNDLES / bundle, tmp_path / "out", config)
    assert not (tmp_path / "out").exists()


def test_record_writes_headline_into_a_verified_bundle(report_dir, tmp_path):
    copy = tmp_path / "bundle"
    shutil.copytree(REFERENCE_PIPELINE, copy)
    write_report(evaluate(copy, tmp_path / "out", EvaluationConfig.quick_run(**TINY)), tmp_path / "out", record=True)
    robustness = load_bundle(copy).manifest["metrics"]["robustness"]
    assert set(robustness) >= {"clean", "linf_0.1_worst_case", "l2_1.5_worst_case", "corruption_mean", "protocol"}
    assert robustness["protocol"]["robust_images"] == 8


def test_results_table_is_made_from_the_report(report_dir):
    from evaluation.results_table import markdown, row

    entry = row(report_dir)
    report = json.loads((report_dir / "report.json").read_text())
    assert entry["clean"] == report["headline"]["clean"] and entry["linf"] == report["headline"]["linf_0.1_worst_case"]
    assert entry["inference_ms"] > 0 and entry["training_min"] > 0
    table = markdown([entry])
    assert "(not conformant)" in table and f"{entry['clean']:.1%} [" in table
    assert entry["linf_worst_of_n"] == report["headline"]["linf_0.1_worst_of_n"] <= entry["linf"]


def test_compare_pairs_two_reports_image_by_image(report_dir):
    from evaluation.compare import compare

    rows = compare(report_dir, report_dir)
    assert {threat for threat, *_ in rows} >= {"clean", "linf_0.1", "l2_1.5"}
    assert all(test.only_a == test.only_b == 0 and test.p_value == 1.0 and a == b for _, _, a, b, test in rows)


def test_corruption_outcomes_are_kept_per_image_and_an_older_run_backfills_them(report_dir, tmp_path):
    from evaluation.compare import compare_corruptions

    saved = json.loads((report_dir / "partial.json").read_text())
    rates, outcomes = saved["results"]["corruptions"], saved["results"]["corruptions_per_image"]
    for model, conditions in outcomes.items():
        assert len(conditions) == 30 and all(bits.count("1") / len(bits) == rates[model][name] for name, bits in conditions.items())
    first, second, test = compare_corruptions(report_dir, report_dir)
    assert first == second and test.only_a == test.only_b == 0 and test.p_value == 1.0

    older = tmp_path / "older"
    older.mkdir()
    del saved["results"]["corruptions_per_image"]  # as a run saved before per-image corruption outcomes were kept
    (older / "partial.json").write_text(json.dumps(saved))
    write_report(evaluate(REFERENCE_PIPELINE, older, EvaluationConfig.quick_run(**TINY)), older)
    backfilled = json.loads((older / "partial.json").read_text())["results"]
    assert backfilled["corruptions_per_image"] == outcomes and backfilled["corruptions"] == rates
    assert backfilled["pipeline|pgd|linf|0.1"] == saved["results"]["pipeline|pgd|linf|0.1"]  # nothing else re-run


def test_joint_worst_case_also_counts_the_l_inf_attacks_of_its_radius():
    """The joint ball contains the L∞ ball of the same ε, so an image any L∞ attack broke is lost there too."""
    from evaluation.evaluate import Evaluation, Unit
    from evaluation.report import robust_table

    units = [Unit("classifier", "pgd", "linf", 0.1), Unit("classifier", "joint_pgd", "joint", 0.1)]
    results = {units[0].key: {"correct": [1, 1, 0, 1]}, units[1].key: {"correct": [1, 0, 1, 1]}}
    table = robust_table(Evaluation(None, None, units, results, None, None, {}))
    assert table["classifier"]["joint"]["0.1"] == {"joint_pgd": 0.75, "worst_case": 0.5}
    assert table["classifier"]["linf"]["0.1"]["worst_case"] == 0.75


def test_worst_of_n_draws_never_exceeds_one_draw(report_dir):
    """Draw 0 is the single-draw prediction, so an image right on all N draws is right on draw 0."""
    results = json.loads((report_dir / "partial.json").read_text())["results"]
    report = json.loads((report_dir / "report.json").read_text())
    judged = [record for key, record in results.items() if key.startswith("pipeline|")]
    assert judged and all(record["draws"] == 4 and len(record["correct_all_draws"]) == len(record["correct"]) for record in judged)
    assert all(not every or single for record in judged for single, every in zip(record["correct"], record["correct_all_draws"]))
    assert not any("correct_all_draws" in record for key, record in results.items() if key.startswith("classifier|"))  # deterministic: N = 1
    clean = results["clean_draws"]["pipeline"]
    assert clean["single"].count("1") / len(clean["single"]) == results["clean"]["pipeline"]  # the earlier single-draw figure
    assert all(not every or single for single, every in zip(map(int, clean["single"]), map(int, clean["all_draws"])))
    head = report["headline"]
    assert head["draws"] == 4 and head["headline"] == "worst_of_n"
    assert head["clean_worst_of_n"] <= head["clean"] and head["linf_0.1_worst_of_n"] <= head["linf_0.1_worst_case"]
    for key, (low, high) in head["intervals"].items():
        assert low <= head[key] <= high
    assert "worst of 4" in (report_dir / "report.md").read_text()


def test_a_run_made_before_worst_of_n_is_completed_without_redoing_it(report_dir, tmp_path):
    """Records without per-draw results get them by attacking the survivors again; the single-draw lists stay as they were."""
    saved = json.loads((report_dir / "partial.json").read_text())
    for key, record in saved["results"].items():
        if key.startswith("pipeline|"):
            del record["correct_all_draws"], record["draws"]
    del saved["results"]["clean_draws"]
    out = tmp_path / "old"
    out.mkdir()
    (out / "partial.json").write_text(json.dumps(saved))
    results = evaluate(REFERENCE_PIPELINE, out, EvaluationConfig.quick_run(**TINY)).results
    for key, record in results.items():
        if key.startswith("pipeline|"):
            assert record["correct"] == saved["results"][key]["correct"] and "catch_up_seconds" in record
            assert len(record["correct_all_draws"]) == len(record["correct"])
            assert all(not every or single for single, every in zip(record["correct"], record["correct_all_draws"]))
    assert results["clean_draws"]["draws"] == 4


def test_square_breaks_an_undefended_classifier():
    """Square alone, without a gradient, takes the standard classifier from >80% to almost nothing at L∞ 0.1."""
    from evaluation.accuracy import accuracy
    from evaluation.attacks import square
    from purifier.data import load_split

    classifier = load_bundle(CHECKOUT_BUNDLES / "fmnist-standard").classifier()
    _, images, labels = load_split("fashion-mnist", None, "test", 32)
    adversarial = square(classifier, images, labels, eps=0.1, queries=300)
    assert float((adversarial - images).abs().max()) <= 0.1 + 1e-6 and 0 <= float(adversarial.min()) and float(adversarial.max()) <= 1
    assert accuracy(classifier, images, labels) > 0.8 and accuracy(classifier, adversarial, labels) <= 0.1


def test_wilson_intervals_contain_the_estimate_and_mcnemar_is_exact():
    from evaluation.stats import mcnemar, paired_t_test, wilson

    for total in (1, 7, 500, 10_000):
        for correct in sorted({0, 1, total // 3, total // 2, total - 1, total}):
            low, high = wilson(correct, total)
            assert 0 <= low <= correct / total <= high <= 1
    assert wilson(250, 500)[1] - wilson(250, 500)[0] == pytest.approx(0.0873, abs=1e-3)  # ±4.4 points at 500 images
    test = mcnemar([True] * 34 + [False] * 16, [False] * 34 + [True] * 16)
    assert (test.only_a, test.only_b) == (34, 16) and test.p_value == pytest.approx(0.0153, abs=1e-4)
    assert mcnemar([True, False], [True, False]).p_value == 1.0
    more_often, larger = [1] * 60 + [0] * 40, [0] * 60 + [25] * 40  # A higher on more images, B higher on average
    test = paired_t_test(more_often, larger)
    assert (test.only_a, test.only_b) == (60, 40) and test.p_value < 1e-6
    assert paired_t_test([3, 5, 7], [2, 6, 7]).p_value == pytest.approx(1.0)


def test_a_planted_gradient_masking_defence_is_flagged():
    """A classifier behind input quantisation has zero gradient almost everywhere: PGD stalls, Square does not,
    and the report counts the images only Square broke."""
    from evaluation.attacks import pgd, square
    from evaluation.evaluate import Evaluation, Unit
    from evaluation.report import gradient_masking
    from purifier.data import load_split

    masked = QuantisedInput(load_bundle(CHECKOUT_BUNDLES / "fmnist-standard").classifier()).eval()
    _, images, labels = load_split("fashion-mnist", None, "test", 32)
    after_pgd = masked(pgd(masked, images, labels, 0.1, steps=20)).argmax(1) == labels
    after_square = masked(square(masked, images, labels, 0.1, queries=300)).argmax(1) == labels
    units = [Unit("classifier", "pgd", "linf", 0.1), Unit("classifier", "square", "linf", 0.1)]
    results = {units[0].key: {"correct": after_pgd.tolist()}, units[1].key: {"correct": (after_pgd & after_square).tolist()}}
    evaluation = Evaluation(None, EvaluationConfig(), units, results, images, labels, {"classifier": masked})
    flag = gradient_masking(evaluation)["classifier"]
    assert after_pgd.float().mean() > 0.5 and flag["flagged"] and flag["single"]["square"] >= int(after_pgd.sum()) - 3


def test_the_epoch_selection_score_sees_through_masked_gradients():
    """robust_accuracy, which picks training epochs, believes PGD alone on a masked defence; with Square queries it does not."""
    from evaluation.accuracy import robust_accuracy
    from purifier.data import load_split

    masked = QuantisedInput(load_bundle(CHECKOUT_BUNDLES / "fmnist-standard").classifier()).eval()
    _, images, labels = load_split("fashion-mnist", None, "test", 32)
    gradient_only = robust_accuracy(masked, images, labels, 0.1, steps=10, eot=1, draws=1)
    with_square = robust_accuracy(masked, images, labels, 0.1, steps=10, eot=1, draws=1, queries=300)
    assert gradient_only > 0.5 and with_square <= 0.1, (gradient_only, with_square)
