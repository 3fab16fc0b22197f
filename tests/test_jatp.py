"""`purifier train jatp` (full and static examples), the feature-space attack it trains on, and `compose`."""

from __future__ import annotations

import pytest
import torch

from evaluation.attacks import pgd
from purifier.assets import CHECKOUT_BUNDLES
from purifier.bundle import compose_bundle, load_bundle
from purifier.errors import BundleError
from training.jatp import JatpConfig, feature_distance, train_jatp


@pytest.fixture(scope="module")
def jatp_bundles(tiny_bundle, tmp_path_factory):
    root = tmp_path_factory.mktemp("jatp")
    common = dict(classifier=tiny_bundle.path, epochs=1, attack_steps=2, limit=256, test_limit=500, command="test")
    full = train_jatp(JatpConfig(out=root / "full", **common))
    static = train_jatp(JatpConfig(out=root / "static", examples="static", feature_weight=0.0, **common))
    return full, static


def test_jatp_bundles_hold_a_deterministic_preprocessor(jatp_bundles):
    full, static = jatp_bundles
    assert (full.manifest["purifier"]["method"], static.manifest["purifier"]["method"]) == ("jatp", "static-preprocessor")
    assert [record["stage"] for record in full.manifest["training"]] == ["classifier", "jatp"]
    (epoch,) = full.manifest["training"][-1]["history"]
    assert {"feature", "pixel", "adversarial_accuracy"} <= set(epoch)
    pipeline = full.pipeline()
    assert not pipeline.is_stochastic
    images = torch.rand(4, 1, 28, 28)
    assert torch.equal(pipeline(images), pipeline(images))


def test_feature_space_attack_moves_features_more_than_random_noise(tiny_bundle):
    classifier = tiny_bundle.classifier()
    images = torch.rand(16, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    clean_features = classifier.forward_features(images).detach()
    adversarial = pgd(classifier.forward_features, images, clean_features, 0.1, steps=5, objective=feature_distance,
                      generator=torch.Generator().manual_seed(1))
    noisy = (images + 0.1 * torch.sign(torch.randn(images.shape, generator=torch.Generator().manual_seed(2)))).clamp(0, 1)
    with torch.no_grad():
        moved = feature_distance(classifier.forward_features(adversarial), clean_features)
        by_noise = feature_distance(classifier.forward_features(noisy), clean_features)
    assert float((adversarial - images).abs().max()) <= 0.1 + 1e-6
    assert float(moved.mean()) > 1.5 * float(by_noise.mean())


def test_compose_puts_one_bundles_purifier_in_front_of_anothers_classifier(jatp_bundles, tiny_bundle, tmp_path):
    full, _ = jatp_bundles
    composed = compose_bundle(full.path, tiny_bundle.path, tmp_path / "composed", command="test")
    reloaded = load_bundle(composed.path)
    for role, source in (("purifier", full), ("classifier", tiny_bundle)):
        got, want = getattr(reloaded, role)().state_dict(), getattr(source, role)().state_dict()
        assert all(torch.equal(got[name], want[name]) for name in want)
    assert reloaded.transform == full.transform
    assert [record["stage"] for record in reloaded.manifest["training"]] == ["classifier", "jatp", "compose"]
    with pytest.raises(BundleError, match="has no purifier"):
        compose_bundle(tiny_bundle.path.parent / "tiny-clf", tiny_bundle.path, tmp_path / "refused")
    with pytest.raises(BundleError, match="has no classifier"):
        compose_bundle(full.path, CHECKOUT_BUNDLES / "fmnist-flow", tmp_path / "refused")
    assert not (tmp_path / "refused").exists()
