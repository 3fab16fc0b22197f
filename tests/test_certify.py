"""Randomized smoothing: the CERTIFY statistics, and `purifier certify` on a denoiser bundle trained here at smoke size."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from scipy.stats import norm
from torch import nn

from cli.main import main
from evaluation.certification import torch_engine
from purifier.assets import CHECKOUT_BUNDLES, REFERENCE_PIPELINE
from purifier.bundle import load_bundle
from purifier.models import Identity
from purifier.pipeline import Pipeline
from purifier.smoothing import certify, lower_confidence_bound
from purifier.transforms import RandomTransform
from tests.serving_helpers import needs_java


class _Constant(nn.Module):
    """Always class 3, whatever the noise: the smoothed classifier is certain."""

    def forward(self, x):
        return torch.nn.functional.one_hot(torch.full((len(x),), 3), 10).float()


class _Coin(nn.Module):
    """A fresh uniformly random class on every call: nothing can be certified."""

    def __init__(self):
        super().__init__()
        self.generator = torch.Generator().manual_seed(0)

    def forward(self, x):
        return torch.rand(len(x), 10, generator=self.generator)


def test_clopper_pearson_lower_bound_is_exact_at_the_edges():
    assert lower_confidence_bound(0, 100, 0.001) == 0.0
    assert lower_confidence_bound(10_000, 10_000, 0.001) == pytest.approx(0.001 ** (1 / 10_000))  # all draws agree: α^(1/n)
    assert lower_confidence_bound(9_000, 10_000, 0.001) < 0.9 < lower_confidence_bound(9_200, 10_000, 0.001)


def _engine(module: nn.Module):
    return lambda images, mask, noise: module(torch.from_numpy(images)).numpy()


def test_certify_certifies_a_certain_model_and_abstains_on_a_coin():
    image, transform, rng = np.random.rand(1, 28, 28).astype(np.float32), RandomTransform("gaussian", missing_rate=0.0, noise_std=0.25), np.random.default_rng(0)
    certain = certify(_engine(_Constant()), transform, image, n0=100, n=10_000, alpha=0.001, num_classes=10, rng=rng)
    assert certain.prediction == 3 and certain.radius == pytest.approx(0.25 * norm.ppf(0.001 ** (1 / 10_000)))
    coin = certify(_engine(_Coin()), transform, image, n0=100, n=1_000, alpha=0.001, num_classes=10, rng=rng)
    assert coin.prediction is None and coin.radius is None


def _noisy() -> Pipeline:
    """The standard classifier under Gaussian noise of σ 0.1 (it was not trained for more), fresh on every call: a base
    classifier to smooth."""
    return Pipeline(load_bundle(CHECKOUT_BUNDLES / "fmnist-standard").pipeline().classifier, Identity(),
                    RandomTransform("gaussian", missing_rate=0.0, noise_std=0.1)).eval()


def test_smooth_adv_stays_inside_each_radius_and_breaks_an_undefended_smoothed_classifier(fmnist_test):
    from evaluation.attacks.smooth_adv import SmoothedSoftClassifier, smooth_adv

    model, images = _noisy(), torch.from_numpy(fmnist_test.images[:16]).permute(0, 3, 1, 2).float() / 255
    labels = torch.from_numpy(fmnist_test.labels[:16]).long()
    radii = torch.linspace(0.5, 3.0, 16)
    adversarial = smooth_adv(model, images, labels, eps=radii, steps=10, samples=8, generator=torch.Generator().manual_seed(0))
    assert ((adversarial - images).flatten(1).norm(dim=1) <= radii + 1e-4).all() and adversarial.min() >= 0 and adversarial.max() <= 1
    smoothed = SmoothedSoftClassifier(model, 64)
    with torch.no_grad():
        assert (smoothed(adversarial).argmax(1) != labels).sum() > (smoothed(images).argmax(1) != labels).sum() + 4


def test_soundness_check_flags_certificates_claiming_more_than_they_hold(fmnist_test):
    """Radii of 3.0 for an undefended smoothed classifier are false certificates: the check must contradict them and call them unsound."""
    from evaluation.attacks.smooth_adv import SmoothedSoftClassifier
    from evaluation.soundness import SoundnessConfig, attack_certificates, summarise
    from purifier.smoothing import Certificate

    model, images = _noisy(), torch.from_numpy(fmnist_test.images[:8]).permute(0, 3, 1, 2).float() / 255
    with torch.no_grad():
        predictions = SmoothedSoftClassifier(model, 64)(images).argmax(1)
    false = [Certificate(int(prediction), 3.0, 1000, 1000) for prediction in predictions]
    config = SoundnessConfig(steps=10, samples=8, n=200)
    outcomes = attack_certificates(model, torch_engine(model), images, false, 10, config)
    summary = summarise(outcomes, config, seconds=1.0)
    assert summary["attacked"] == 8 and summary["contradicted"] >= 4 and not summary["sound"]
    assert summarise(outcomes[:0], config, 0.0)["sound"]


@pytest.fixture(scope="module")
def denoiser(tmp_path_factory):
    """A gaussian-transform bundle (σ 0.25) in front of the standard classifier, denoised-smoothing objective, smoke size."""
    out = tmp_path_factory.mktemp("smoothing") / "denoiser"
    main(["train", "atop", "--classifier", str(CHECKOUT_BUNDLES / "fmnist-standard"), "--transform", "gaussian", "--pretrain-epochs", "1",
          "--epochs", "1", "--attack", "none", "--targets", "classifier", "--limit", "1024", "--test-limit", "500", "--out", str(out)])
    main(["export", str(out)])  # certify draws on the served engine, ONNX Runtime, by default
    return load_bundle(out)


def test_certify_command_reports_records_and_resumes(denoiser, tmp_path, capsys):
    assert denoiser.transform.kind == "gaussian" and denoiser.transform.noise_std == 0.25 and denoiser.pipeline().is_stochastic
    out = tmp_path / "report"
    main(["certify", str(denoiser.path), "--out", str(out), "--quick", "--images", "8", "--record"])
    report = json.loads((out / "report.json").read_text())
    assert {p.name for p in out.iterdir()} >= {"report.json", "report.md", "certified_accuracy.png", "partial.json"}
    assert report["images"] == 8 and set(report["accuracy_at_radius"]) == {"0", "0.25", "0.5", "0.75", "1"}
    values = list(report["accuracy_at_radius"].values())
    assert values == sorted(values, reverse=True) and not report["protocol"]["conformant"]
    assert all(r is None or r > 0 for r in report["radii"]) and len(report["radii"]) == 8
    certified = load_bundle(denoiser.path).manifest["metrics"]["certified"]
    assert certified["sigma"] == 0.25 and certified["n"] == 200 and certified["accuracy_at_radius"] == report["accuracy_at_radius"]
    before = (out / "partial.json").read_text()
    main(["certify", str(denoiser.path), "--out", str(out), "--quick", "--images", "8"])
    assert (out / "partial.json").read_text() == before  # nothing certified twice
    main(["certify", str(denoiser.path), "--out", str(out), "--quick", "--images", "8", "--soundness", "--record"])
    check = json.loads((out / "report.json").read_text())["soundness"]
    assert check["attacked"] == sum(r is not None for r in report["radii"]) and 0 <= check["contradicted"] <= check["attacked"]
    assert "Soundness check" in (out / "report.md").read_text() and load_bundle(denoiser.path).manifest["metrics"]["certified"]["soundness"] == check


def test_onnxruntime_and_pytorch_engines_draw_the_same_noise_and_agree(denoiser, tmp_path, capsys):
    """Offline certification on the served engine is the PyTorch pipeline's, up to float rounding on borderline draws."""
    reports = {}
    for runtime in ("onnxruntime", "torch"):
        main(["certify", str(denoiser.path), "--out", str(tmp_path / runtime), "--quick", "--images", "6", "--runtime", runtime])
        reports[runtime] = json.loads((tmp_path / runtime / "report.json").read_text())
    assert [r["protocol"]["engine"] for r in reports.values()] == ["onnxruntime", "torch"]
    counts = [[c["count"] for c in json.loads((tmp_path / runtime / "partial.json").read_text())["certificates"]] for runtime in reports]
    assert all(abs(a - b) <= 4 for a, b in zip(*counts)), counts  # of n = 200 draws each


def test_certified_table_pairs_two_reports_of_one_sigma(denoiser, tmp_path, capsys):
    from evaluation import certified_table

    for seed in (0, 1):
        main(["certify", str(denoiser.path), "--out", str(tmp_path / f"seed-{seed}"), "--quick", "--images", "6", "--seed", str(seed)])
    capsys.readouterr()
    certified_table.main([str(tmp_path / "seed-0"), str(tmp_path / "seed-1")])
    printed = capsys.readouterr().out
    assert printed.count(f"| {denoiser.name} (not protocol-conformant) | 0.25 |") == 2 and "not run" in printed
    assert printed.count("exact McNemar p =") == 2  # r = 0 and 0.25; n = 200 draws certify nothing above 0.46


def test_certify_refuses_a_bundle_without_the_gaussian_transform(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["certify", str(REFERENCE_PIPELINE), "--out", str(tmp_path / "out"), "--quick"])
    assert exit_info.value.code == 2 and "gaussian" in capsys.readouterr().err and not (tmp_path / "out").exists()


def test_certify_option_is_read_from_every_request_form():
    import base64

    import numpy as np

    from purifier.images import encode_png
    from serving.protocols import parse_request

    png = encode_png(np.zeros((28, 28, 1), dtype=np.uint8))
    b64 = base64.b64encode(png).decode()
    shape = (1, 28, 28)
    assert parse_request({"body": png}, shape, {"x-certify": "true"}).certify
    assert parse_request({"file": png, "certify": b"true"}, shape).certify
    assert parse_request({"body": {"image": b64, "certify": True}}, shape).certify
    assert parse_request({"body": {"inputs": [{"name": "i", "datatype": "BYTES", "shape": [1], "data": [b64]}], "parameters": {"certify": True}}}, shape).certify
    assert not parse_request({"body": png}, shape).certify


@needs_java
def test_the_server_answers_certify_true_with_a_certified_radius(denoiser, tmp_path, fmnist_test):
    """A randomized-smoothing bundle served for real: certify=true adds the smoothed label and its radius; the default bundle refuses."""
    import requests

    from purifier.images import encode_png
    from serving.server_state import read_keys
    from tests.serving_helpers import PORT, serve

    started = serve([str(denoiser.path), "--seed", "0"], tmp_path)
    try:
        assert started.returncode == 0, started.stderr + started.stdout
        key = read_keys(tmp_path / "serve").inference
        url = f"http://127.0.0.1:{PORT}/predictions/{denoiser.name}"
        answers = [requests.put(url, data=encode_png(image), headers={"Authorization": f"Bearer {key}", "X-Certify": "true"}, timeout=60).json()
                   for image in fmnist_test.images[:6]]
        for body in answers:
            assert {"label", "smoothed_label", "certified_radius"} <= set(body), body
            assert (body["smoothed_label"] is None) == (body["certified_radius"] is None)
            assert ("labels_differ" in body) == (body["smoothed_label"] != body["label"])
        plain = requests.put(url, data=encode_png(fmnist_test.images[0]), headers={"Authorization": f"Bearer {key}"}, timeout=60).json()
        assert "certified_radius" not in plain
        metrics = requests.get(f"http://127.0.0.1:{PORT + 2}/metrics", timeout=30).text
        assert f'purifier_certified_total{{model="{denoiser.name}"}} 6.0' in metrics
    finally:
        serve(["--stop"], tmp_path)


def test_purify_certify_writes_radii_and_a_non_smoothing_model_refuses(denoiser, tmp_path, capsys):
    from purifier.errors import RequestFormatError
    from serving.service import PurificationService

    main(["purify", "--dataset", "fashion-mnist", "--limit", "12", "--bundle", str(denoiser.path), "--certify", str(tmp_path / "out")])
    records = [json.loads(line) for line in (tmp_path / "out" / "predictions.jsonl").read_text().splitlines()]
    assert len(records) == 12 and all("certified_radius" in r and "smoothed_label" in r for r in records)
    with pytest.raises(RequestFormatError, match="cannot certify"):
        PurificationService.from_bundle(REFERENCE_PIPELINE, seed=0).certify(np.zeros((1, 28, 28, 1), dtype=np.uint8))


def test_noise_trained_classifier_is_a_certifiable_bundle(tmp_path, capsys):
    """The control of denoised smoothing: a classifier trained with Gaussian noise, bundled with the identity purifier."""
    out = tmp_path / "noise-trained"
    main(["train", "classifier", "--method", "gaussian", "--noise-std", "0.5", "--epochs", "1", "--limit", "512", "--widths", "8,16,16", "--out", str(out)])
    bundle = load_bundle(out)
    assert bundle.manifest["purifier"]["architecture"] == "identity" and bundle.transform.kind == "gaussian" and bundle.transform.noise_std == 0.5
    pipeline = bundle.pipeline(seed=0)
    image = torch.zeros(2, 1, 28, 28)
    assert not torch.equal(pipeline.purify(image), pipeline.purify(image))  # fresh noise on every call, no network
    main(["certify", str(out), "--out", str(tmp_path / "report"), "--quick", "--images", "4", "--runtime", "torch"])  # no ONNX graphs needed
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    assert report["sigma"] == 0.5 and report["protocol"]["engine"] == "torch"
