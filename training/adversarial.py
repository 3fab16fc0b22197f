"""Adversarial training of classifiers: the robust baselines every defence is compared with.

PGD-AT (Madry et al., ICLR 2018):
    min_θ E_(x,y) max_{‖δ‖∞ ≤ ε} CE(f_θ(x + δ), y),  the inner max by PGD with random start.
FGSM-RS, "fast" adversarial training (Wong, Rice & Kolter, ICLR 2020):
    the inner max by one FGSM step of size α = 1.25·ε from a uniform random start in the ε-ball.

Adversarial examples are crafted with the model in eval mode (batch-norm statistics are not
updated by the attack's forward passes) and the model is trained on them alone.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from evaluation.attacks import pgd

METHODS = ("standard", "pgd", "fgsm_rs")


def adversarial_batch(
    model: nn.Module, images: torch.Tensor, labels: torch.Tensor, method: str, eps: float, steps: int, generator: torch.Generator,
) -> torch.Tensor:
    """The training inputs for ``method``: the clean batch, or its PGD / FGSM-RS adversarial version."""
    if method == "standard":
        return images
    if method not in METHODS:
        raise ValueError(f"unknown training method {method!r}; use one of {', '.join(METHODS)}")
    with eval_mode(model):
        if method == "pgd":
            return pgd(model, images, labels, eps, steps=steps, generator=generator, keep_best=False)
        return pgd(model, images, labels, eps, steps=1, step_size=1.25 * eps, generator=generator, keep_best=False)


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """Craft attacks with the model in eval mode (batch norm untouched), then restore its mode."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)
