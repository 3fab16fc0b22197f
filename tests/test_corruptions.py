"""The corruption suite: deterministic, in range, and harder with severity."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from evaluation.accuracy import accuracy
from evaluation.corruptions import CORRUPTIONS, corrupt
from purifier.bundle import load_bundle


@pytest.fixture(scope="module")
def batch(fmnist_test):
    return fmnist_test.head(300).tensors()


@pytest.mark.parametrize("name", list(CORRUPTIONS))
def test_each_corruption_is_seeded_in_range_and_grows_with_severity(batch, name):
    images, _ = batch
    first, again, other_seed = corrupt(images, name, 2, seed=0), corrupt(images, name, 2, seed=0), corrupt(images, name, 2, seed=1)
    assert torch.equal(first, again) and first.shape == images.shape
    assert float(first.min()) >= 0 and float(first.max()) <= 1
    changes = [float((corrupt(images, name, severity) - images).abs().mean()) for severity in (1, 2, 3)]
    assert changes[0] > 0.005 and changes[0] <= changes[1] <= changes[2], changes
    if name in ("gaussian_noise", "shot_noise", "impulse_noise", "elastic", "motion_blur"):
        assert not torch.equal(first, other_seed)


def test_suite_hurts_a_standard_classifier_more_at_higher_severity(batch):
    images, labels = batch
    classifier = load_bundle("bundles/fmnist-standard").classifier()
    mean = [np.mean([accuracy(classifier, corrupt(images, name, severity), labels) for name in CORRUPTIONS]) for severity in (1, 2, 3)]
    assert accuracy(classifier, images, labels) > mean[0] > mean[1] > mean[2]


def test_unknown_names_are_refused(batch):
    with pytest.raises(ValueError, match="unknown corruption"):
        corrupt(batch[0], "fog-of-war", 1)
    with pytest.raises(ValueError, match="severity"):
        corrupt(batch[0], "jpeg", 4)
