"""Model registry: architecture name -> constructor. Bundles name architectures by these keys."""

from __future__ import annotations

from typing import Any

from torch import nn

from purifier.models.flow import Glow
from purifier.models.identity import Identity
from purifier.models.imported import ImportedClassifier
from purifier.models.resnet import ResNetSmall
from purifier.models.unet import UNet

CLASSIFIERS: dict[str, type[nn.Module]] = {"resnet_small": ResNetSmall, "onnx": ImportedClassifier}
PURIFIERS: dict[str, type[nn.Module]] = {"unet": UNet, "identity": Identity}
FLOWS: dict[str, type[nn.Module]] = {"glow": Glow}


def build(registry: dict[str, type[nn.Module]], architecture: str, config: dict[str, Any]) -> nn.Module:
    """Instantiate ``architecture`` from ``registry`` with keyword ``config``."""
    if architecture not in registry:
        raise KeyError(f"unknown architecture {architecture!r}; known: {', '.join(sorted(registry))}")
    return registry[architecture](**config)
