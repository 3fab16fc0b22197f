"""IJSAT's parts: the Glow flow (exact inverse, log-determinant against a brute-force Jacobian,
`purifier train flow`), the joint-space attack, Robust Mixup and `purifier train ijsat`."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from cli.main import main
from evaluation.accuracy import accuracy
from evaluation.attacks import joint_pgd, pgd
from purifier.assets import CHECKOUT_BUNDLES, REFERENCE_PIPELINE
from purifier.bundle import load_bundle
from purifier.models.flow import Glow
from training.ijsat import robust_mixup_batch


def _perturbed(flow: Glow, scale: float) -> Glow:
    """A flow away from its identity initialisation, with actnorm initialised on data."""
    flow.train()
    flow(torch.rand(8, flow.in_channels, flow.image_size, flow.image_size, dtype=next(flow.parameters()).dtype))
    with torch.no_grad():
        for parameter in flow.parameters():
            parameter.add_(scale * torch.randn_like(parameter))
    return flow.eval()


def test_decode_inverts_encode_to_float_precision(fmnist_test):
    torch.manual_seed(0)
    flow = _perturbed(Glow(in_channels=1, levels=2, steps=3, hidden=16), 0.02)
    images, _ = fmnist_test.head(16).tensors()
    with torch.no_grad():
        z = flow.encode(images)
        assert z.shape == (16, 784)
        assert float((flow.decode(z) - images).abs().max()) < 1e-4


def test_log_determinant_matches_the_brute_force_jacobian():
    torch.manual_seed(1)
    flow = _perturbed(Glow(in_channels=1, levels=2, steps=2, hidden=8, image_size=4).double(), 0.05)
    x = torch.rand(1, 1, 4, 4, dtype=torch.double)
    jacobian = torch.autograd.functional.jacobian(lambda v: flow(v.view(1, 1, 4, 4))[0].view(-1), x.view(-1))
    brute_force = torch.linalg.slogdet(jacobian)[1]
    with torch.no_grad():
        assert abs(float(brute_force) - float(flow(x)[1])) < 1e-9
    assert abs(float(brute_force)) > 0.1  # not trivially the identity


@pytest.fixture(scope="module")
def committed_flow() -> Glow:
    return load_bundle(CHECKOUT_BUNDLES / "fmnist-flow").flow()


def test_the_committed_flow_inverts_real_images_and_nearby_latents(committed_flow, fmnist_test):
    """A trained flow, not only a random one: its inverse must stay well-conditioned on the data and around it."""
    flow = committed_flow
    images, _ = fmnist_test.head(64).tensors()
    with torch.no_grad():
        z = flow.encode(images)
        assert float((flow.decode(z) - images).abs().max()) < 1e-3
        nearby = flow.decode(z + (torch.rand(z.shape, generator=torch.Generator().manual_seed(0)) * 2 - 1) * 0.1)
    assert torch.isfinite(nearby).all() and float(nearby.min()) > -1 and float(nearby.max()) < 2


def test_latent_scale_grows_with_eta_from_zero(committed_flow, fmnist_test):
    from evaluation.latent_scale import pixel_displacement

    images, _ = fmnist_test.head(32).tensors()
    zero, small, large = (pixel_displacement(committed_flow, images, eta) for eta in (0.0, 0.03, 0.1))
    assert zero["linf"] < 1e-3
    assert 1e-3 < small["linf"] < large["linf"] and small["l2"] < large["l2"]


@pytest.fixture(scope="module")
def flow_bundle(tmp_path_factory):
    out = tmp_path_factory.mktemp("flow") / "flow"
    main(["train", "flow", "--epochs", "1", "--limit", "1024", "--batch-size", "32", "--levels", "2", "--steps", "2", "--hidden", "16", "--out", str(out)])
    return load_bundle(out)


def test_train_flow_writes_a_flow_bundle_that_learned(flow_bundle):
    bundle = flow_bundle
    bits = bundle.manifest["metrics"]["test_bits_per_dim"]["value"]
    assert bits < 8.0  # a uniform model of 8-bit pixels has 8 bits/dim
    assert not bundle.has_purifier and bundle.manifest["classifier"] is None
    flow = bundle.flow()
    image = torch.rand(2, 1, 28, 28)
    with torch.no_grad():
        assert float((flow.decode(flow.encode(image)) - image).abs().max()) < 1e-4


def test_joint_space_attack_stays_in_its_budget_and_is_stronger_than_image_space(fmnist_test):
    torch.manual_seed(2)
    flow = _perturbed(Glow(in_channels=1, levels=2, steps=2, hidden=16), 0.01).requires_grad_(False)
    classifier = load_bundle(REFERENCE_PIPELINE).classifier().requires_grad_(False)
    images, labels = fmnist_test.head(100).tensors()
    image_only = joint_pgd(classifier, flow, images, labels, eps=0.02, eta=0.0, steps=10, generator=torch.Generator().manual_seed(0))
    assert float((image_only - images).abs().max()) <= 0.02 + 1e-4  # η = 0: the L∞ ball (up to the flow's float error)
    joint = joint_pgd(classifier, flow, images, labels, eps=0.02, eta=0.05, steps=10, generator=torch.Generator().manual_seed(0))
    reference = pgd(classifier, images, labels, 0.02, steps=10, generator=torch.Generator().manual_seed(0))
    assert accuracy(classifier, joint, labels) <= accuracy(classifier, reference, labels)
    assert abs(accuracy(classifier, image_only, labels) - accuracy(classifier, reference, labels)) <= 0.05


def test_robust_mixup_attacks_interpolated_pairs_with_mixed_labels(flow_bundle, fmnist_test):
    classifier = load_bundle(REFERENCE_PIPELINE).classifier().requires_grad_(False)
    images, labels = fmnist_test.head(32).tensors()
    adversarial, mixed, targets = robust_mixup_batch(classifier, flow_bundle.flow().requires_grad_(False), images, labels, 10,
                                                     eps=0.1, eta=0.1, steps=2, alpha=1.0, generator=torch.Generator().manual_seed(0))
    assert adversarial.shape == images.shape == mixed.shape and 0 <= float(adversarial.min()) and float(adversarial.max()) <= 1
    assert accuracy(classifier, mixed, targets.argmax(1)) > accuracy(classifier, adversarial, targets.argmax(1))  # x̄ is the clean interpolation
    assert torch.allclose(targets.sum(1), torch.ones(32)) and float(targets.max()) <= 1
    assert int((targets > 0).sum(1).max()) == 2  # two classes mixed for some pairs
    assert accuracy(classifier, adversarial, targets.argmax(1)) < accuracy(classifier, images, labels)


def test_train_ijsat_writes_a_classifier_bundle(flow_bundle, tmp_path, capsys):
    out = tmp_path / "ijsat"
    main(["train", "ijsat", "--flow", str(flow_bundle.path), "--epochs", "1", "--limit", "256", "--attack-steps", "2", "--clean-weight", "1",
          "--out", str(out)])
    entry = load_bundle(out).manifest["classifier"]
    assert entry["method"] == "ijsat" and entry["flow"] == flow_bundle.name and entry["eta"] == 0.03 and entry["clean_weight"] == 1.0


def test_ijsat_on_top_of_the_pgd_at_classifier_starts_from_its_weights(flow_bundle, tmp_path, capsys):
    """--init: the committed PGD-AT classifier, trained further by IJSAT (zero learning rate here, so the weights must stay its own)."""
    at = load_bundle(CHECKOUT_BUNDLES / "fmnist-pgd-at")
    out = tmp_path / "ijsat-on-at"
    main(["train", "ijsat", "--flow", str(flow_bundle.path), "--init", str(at.path), "--epochs", "1", "--limit", "128", "--attack-steps", "1",
          "--lr", "0", "--out", str(out)])
    trained = load_bundle(out)
    assert trained.manifest["classifier"]["init"] == at.name and trained.manifest["classifier"]["config"] == at.manifest["classifier"]["config"]
    for name, value in at.classifier().state_dict().items():
        if not name.endswith(("running_mean", "running_var", "num_batches_tracked")):  # batch norm statistics move in train mode
            assert torch.equal(trained.classifier().state_dict()[name], value), name
    with pytest.raises(SystemExit):
        main(["train", "ijsat", "--flow", str(flow_bundle.path), "--init", str(at.path), "--widths", "8,16,32", "--epochs", "1",
              "--limit", "128", "--out", str(tmp_path / "refused")])
    assert "drop --widths or pass those" in capsys.readouterr().err and not (tmp_path / "refused").exists()


def test_evaluate_runs_the_joint_space_threat(flow_bundle, tmp_path):
    from evaluation.evaluate import EvaluationConfig, evaluate
    from evaluation.report import write_report

    config = EvaluationConfig.quick_run(images=8, clean_images=100, corruption_images=20, batch_size=8, joint_flow=flow_bundle.path,
                                        autoattack=())
    without = dataclasses.replace(config, joint_flow=None)
    first = evaluate(CHECKOUT_BUNDLES / "fmnist-standard", tmp_path, without)
    report = write_report(evaluate(CHECKOUT_BUNDLES / "fmnist-standard", tmp_path, config), tmp_path)  # adds the joint unit only
    assert report["clean"] == first.results["clean"]
    joint = report["headline"]["joint_0.1_worst_case"]
    assert joint is not None and joint <= report["robust"]["classifier"]["linf"]["0.1"]["worst_case"]
    assert "joint ε 0.1 η 0.03 worst case" in (tmp_path / "report.md").read_text()
