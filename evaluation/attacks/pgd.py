"""Projected gradient descent (Madry et al., ICLR 2018) with EOT; FGSM (Goodfellow et al., 2015)
is its one-step case, ``pgd(..., steps=1, step_size=eps, random_start=False)``.

Threat models: L∞ ball ‖δ‖∞ ≤ ε or L2 ball ‖δ‖₂ ≤ ε around x, intersected with [0, 1].

    x⁰ = x + U(ball)                       (random start, optional)
    xᵗ⁺¹ = Π_ball(xᵗ + α · dir(ĝᵗ))        dir = sign (L∞) or g/‖g‖₂ (L2)
    ĝᵗ = (1/K) Σₖ ∇ₓ CE(f_k(xᵗ), y)        EOT: K calls of a stochastic model, fresh randomness each

For a Pipeline, each call samples a new random transform, so EOT averages the true gradient
through transform, purifier and classifier. The strongest iterate (highest loss averaged over
the EOT samples) is returned per image, not merely the last one.

>>> x_adv = pgd(model, images, labels, eps=0.1, steps=100, norm="linf", eot=20)
>>> x_adv.shape == images.shape and float((x_adv - images).abs().max()) <= 0.1 + 1e-6
True
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from torch.nn import functional as F

NORMS = ("linf", "l2")
Objective = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _flat_norm(t: torch.Tensor) -> torch.Tensor:
    return t.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, *([1] * (t.dim() - 1)))


def _project(delta: torch.Tensor, eps: float, norm: str) -> torch.Tensor:
    if norm == "linf":
        return delta.clamp(-eps, eps)
    return delta * (eps / _flat_norm(delta)).clamp(max=1.0)


def _random_start(images: torch.Tensor, eps: float, norm: str, generator: torch.Generator | None) -> torch.Tensor:
    if norm == "linf":
        return (torch.rand(images.shape, generator=generator) * 2 - 1).mul_(eps)
    direction = torch.randn(images.shape, generator=generator)
    radius = torch.rand((images.shape[0],) + (1,) * (images.dim() - 1), generator=generator) ** (1.0 / images[0].numel())
    return direction / _flat_norm(direction) * radius * eps


def cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The default objective: per-image cross-entropy."""
    return F.cross_entropy(logits, labels, reduction="none")


def _loss_and_gradient(model: nn.Module, x: torch.Tensor, labels: torch.Tensor, eot: int, objective: Objective) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-image loss and its gradient, both averaged over ``eot`` calls of the model."""
    x = x.detach().requires_grad_(True)
    total = torch.zeros(len(x))
    for _ in range(eot):
        loss = objective(model(x), labels)
        loss.sum().backward()
        total += loss.detach()
    return total / eot, x.grad.detach() / eot


def pgd(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    eps: float | torch.Tensor,
    steps: int = 10,
    step_size: float | None = None,
    norm: str = "linf",
    random_start: bool = True,
    eot: int = 1,
    generator: torch.Generator | None = None,
    keep_best: bool = True,
    objective: Objective = cross_entropy,
) -> torch.Tensor:
    """Untargeted PGD maximising ``objective(model(x), labels)`` (per image; default cross-entropy);
    returns adversarial images in [0, 1] (N, C, H, W). ``labels`` is whatever the objective
    compares the output with: class indices, or clean features for a feature-space attack.

    ``eps`` is one radius for all images or a tensor of one per image (N,). ``step_size`` defaults
    to 2.5·ε/steps (Madry et al.). ``generator`` seeds the random start.
    ``keep_best`` returns each image's highest-loss iterate (evaluation); without it, the last
    iterate (adversarial training, as in the papers). The model is used as it is: call
    ``.eval()`` first for deterministic layers.
    """
    if norm not in NORMS:
        raise ValueError(f"unknown norm {norm!r}; use one of {NORMS}")
    if isinstance(eps, torch.Tensor):
        eps = eps.view(-1, *([1] * (images.dim() - 1)))
    step_size = 2.5 * eps / steps if step_size is None else step_size
    images = images.detach()
    delta = _random_start(images, eps, norm, generator) if random_start else torch.zeros_like(images)
    x = (images + delta).clamp(0, 1)
    best_x, best_loss = x.clone(), torch.full((len(x),), -float("inf"))
    for step in range(steps + 1):
        if step == steps and not keep_best:
            return x.detach()
        loss, gradient = _loss_and_gradient(model, x, labels, eot, objective)
        improved = loss > best_loss
        best_x[improved], best_loss[improved] = x[improved], loss[improved]
        if step == steps:
            break
        direction = gradient.sign() if norm == "linf" else gradient / _flat_norm(gradient)
        delta = _project(x + step_size * direction - images, eps, norm)
        x = (images + delta).clamp(0, 1)
    return best_x.detach()

