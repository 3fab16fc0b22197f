"""Sanity checks that can fail: our PGD against an independent implementation, attack strength
on a purifier pipeline, monotonicity in ε, and an undefended classifier's collapse."""

from __future__ import annotations

import pytest
import torch

from evaluation.accuracy import accuracy
from evaluation.attacks import BPDA, pgd
from purifier.assets import REFERENCE_PIPELINE
from purifier.bundle import load_bundle


@pytest.fixture(scope="module")
def bundle():
    return load_bundle(REFERENCE_PIPELINE)


@pytest.fixture(scope="module")
def batch(fmnist_test):
    return fmnist_test.head(200).tensors()


def _seeded(seed=0):
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("norm,eps", [("linf", 0.1), ("l2", 1.5)])
def test_perturbations_stay_in_the_threat_model(bundle, batch, norm, eps):
    images, labels = batch
    adversarial = pgd(bundle.classifier(), images, labels, eps, steps=5, norm=norm, generator=_seeded())
    delta = (adversarial - images).flatten(1)
    size = delta.abs().max(dim=1).values if norm == "linf" else delta.norm(dim=1)
    assert float(size.max()) <= eps + 1e-5 and float(adversarial.min()) >= 0 and float(adversarial.max()) <= 1


def test_undefended_classifier_collapses_at_linf_0_1(bundle, batch):
    images, labels = batch
    classifier = bundle.classifier()
    assert accuracy(classifier, images, labels) > 0.85
    assert accuracy(classifier, pgd(classifier, images, labels, 0.1, steps=20, generator=_seeded()), labels) <= 0.02
    one_step = pgd(classifier, images, labels, 0.1, steps=1, step_size=0.1, random_start=False)
    assert accuracy(classifier, one_step, labels) <= 0.15


def test_agrees_with_torchattacks_pgd(bundle, batch):
    torchattacks = pytest.importorskip("torchattacks", reason="torchattacks is installed by scripts/bootstrap.sh")
    images, labels = batch
    classifier = bundle.classifier()
    eps, steps, alpha = 0.02, 20, 0.005  # a radius where accuracy is neither 0 nor clean
    ours = accuracy(classifier, pgd(classifier, images, labels, eps, steps=steps, step_size=alpha, generator=_seeded()), labels)
    torch.manual_seed(0)
    theirs_attack = torchattacks.PGD(classifier, eps=eps, alpha=alpha, steps=steps, random_start=True)
    theirs = accuracy(classifier, theirs_attack(images, labels), labels)
    assert 0.05 < theirs < 0.8, f"radius gives a degenerate comparison ({theirs:.2f})"
    assert abs(ours - theirs) <= 0.05, f"ours {ours:.3f} vs torchattacks {theirs:.3f}"
    assert ours <= theirs + 0.01  # best-iterate PGD is never weaker


def test_robust_accuracy_falls_monotonically_with_eps(bundle, batch):
    images, labels = batch
    classifier = bundle.classifier()
    curve = [accuracy(classifier, pgd(classifier, images, labels, eps, steps=10, generator=_seeded()), labels) if eps else accuracy(classifier, images, labels)
             for eps in (0.0, 0.01, 0.02, 0.04, 0.1)]
    assert all(later <= earlier for earlier, later in zip(curve, curve[1:])), curve
    assert curve[0] - curve[-1] > 0.8


def test_full_gradient_eot_attack_beats_classifier_only_attack(bundle, fmnist_test):
    images, labels = fmnist_test.head(100).tensors()
    pipeline = bundle.pipeline(seed=0)
    eps = 0.05
    transferred = pgd(pipeline.classifier, images, labels, eps, steps=10, generator=_seeded())
    full = pgd(pipeline, images, labels, eps, steps=10, eot=4, generator=_seeded())
    bpda = pgd(BPDA(pipeline), images, labels, eps, steps=10, eot=4, generator=_seeded())
    accuracies = {}
    for name, adversarial in {"transfer": transferred, "full": full, "bpda": bpda}.items():
        pipeline.reseed(1)
        accuracies[name] = accuracy(pipeline, adversarial, labels)
    assert accuracies["full"] <= accuracies["transfer"], accuracies
    assert accuracies["full"] <= accuracies["bpda"] + 0.05, accuracies
