"""BPDA (Athalye, Carlini & Wagner, ICML 2018): the purifier approximated by the identity on the
backward pass, an extra check that a purifier's gradients are not merely obfuscated.

    forward:  f(g(t(x)))         backward:  ∂/∂x f(g(t(x))) ≈ ∂/∂x' f(x') at x' = g(t(x))

>>> x_adv = pgd(BPDA(pipeline), images, labels, eps=0.1, steps=100, eot=20)
"""

from __future__ import annotations

import torch
from torch import nn

from purifier.pipeline import Pipeline


class BPDA(nn.Module):
    """A Pipeline whose random transform and purifier pass gradients straight through."""

    def __init__(self, pipeline: Pipeline) -> None:
        super().__init__()
        self.pipeline = pipeline

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        purified = self.pipeline.purify(image)
        return self.pipeline.classifier(image + (purified - image).detach())
