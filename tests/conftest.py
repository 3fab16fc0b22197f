"""Shared fixtures: real Fashion-MNIST data and a tiny bundle trained once per test session."""

from __future__ import annotations

import pytest

from purifier.data import load_dataset


def pytest_addoption(parser):
    parser.addoption("--runslow", action="store_true", help="also run checks marked slow (minutes each)")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--runslow"):
        return
    skip = pytest.mark.skip(reason="slow check: CI skips it; run with --runslow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def fmnist_test():
    return load_dataset("fashion-mnist", "test")


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory):
    """Classifier + purifier pre-trained (L_gan+rec) for one epoch on 1,000 real images."""
    from training.atop import AtopConfig, train_atop
    from training.classifier import ClassifierConfig, train_classifier

    root = tmp_path_factory.mktemp("bundles")
    train_classifier(ClassifierConfig(out=root / "tiny-clf", epochs=1, limit=1000, command="test"))
    return train_atop(AtopConfig(out=root / "tiny", classifier=root / "tiny-clf", pretrain_epochs=1, epochs=0, limit=1000, test_limit=500,
                                 command="test"))
