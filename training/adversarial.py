"""Adversarial training of classifiers: the robust baselines every defence is compared with.

PGD-AT (Madry et al., ICLR 2018):
    min_θ E_(x,y) max_{‖δ‖∞ ≤ ε} CE(f_θ(x + δ), y),  the inner max by PGD with random start.
FGSM-RS, "fast" adversarial training (Wong, Rice & Kolter, ICLR 2020):
    the inner max by one FGSM step of size α = 1.25·ε from a uniform random start in the ε-ball.
TRADES (Zhang et al., ICML 2019):
    min_θ E_(x,y) [ CE(f_θ(x), y) + β · max_{‖x' − x‖∞ ≤ ε} KL(f_θ(x) ‖ f_θ(x')) ],
    the inner max by PGD on the KL term (step ε/4, random start in the ε-ball).

Adversarial examples are crafted with the model in eval mode (batch-norm statistics are not
updated by the attack's forward passes) and the model is trained on them alone.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn
from torch.nn import functional as F

from evaluation.attacks import pgd

METHODS = ("standard", "pgd", "fgsm_rs", "trades")


def adversarial_batch(
    model: nn.Module, images: torch.Tensor, labels: torch.Tensor, method: str, eps: float, steps: int, generator: torch.Generator,
) -> torch.Tensor:
    """The training inputs for ``method``: the clean batch, or its PGD / FGSM-RS adversarial version."""
    if method == "standard":
        return images
    if method not in METHODS or method == "trades":
        raise ValueError(f"unknown training method {method!r} for examples alone; use one of {', '.join(METHODS[:3])} (TRADES: trades_loss)")
    with eval_mode(model):
        if method == "pgd":
            return pgd(model, images, labels, eps, steps=steps, generator=generator, keep_best=False)
        return pgd(model, images, labels, eps, steps=1, step_size=1.25 * eps, generator=generator, keep_best=False)


def kl_divergence(logits: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Per-image KL(reference ‖ softmax(logits)) for reference probabilities: TRADES' boundary term."""
    return F.kl_div(F.log_softmax(logits.float(), dim=1), reference, reduction="none").sum(1)


def trades_loss(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, eps: float, steps: int, beta: float,
                generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """(TRADES loss of the batch, clean logits): CE(f(x), y) + β · KL(f(x) ‖ f(x')) with x' from PGD on the KL term."""
    with eval_mode(model), torch.no_grad():
        reference = F.softmax(model(images).float(), dim=1)
    with eval_mode(model):
        adversarial = pgd(model, images, reference, eps, steps=steps, step_size=eps / 4, generator=generator, keep_best=False,
                          objective=kl_divergence)
    logits = model(images)
    boundary = kl_divergence(model(adversarial), F.softmax(logits.float(), dim=1)).mean()
    return F.cross_entropy(logits.float(), labels) + beta * boundary, logits


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """Craft attacks with the model in eval mode (batch norm untouched), then restore its mode."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)
