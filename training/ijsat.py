"""Interpolated Joint Space Adversarial Training, IJSAT (Lau et al., TPAMI 2023): the inner
maximisation of one training batch.

Robust Mixup interpolates random pairs of the batch and maximises the adversity of the
interpolated image in the joint space of a normalizing flow F:

    x̄ = λ·x_i + (1 − λ)·x_j,   ȳ = λ·y_i + (1 − λ)·y_j,   λ ~ Beta(α, α)
    x' = argmax_{‖δ‖∞ ≤ ε, ‖δz‖∞ ≤ η} CE(f(clip(F⁻¹(F(x̄) + δz) + δ)), ȳ)     (joint_pgd, soft labels)

and the classifier is trained on (x', ȳ): min_f E CE(f(x'), ȳ), plus, with a clean weight w > 0,
the clean interpolation term of interpolated adversarial training (Lamb et al., AISec 2019):
min_f E [CE(f(x'), ȳ) + w · CE(f(x̄), ȳ)]. The attack runs with the model in eval mode; the flow
is frozen.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from evaluation.attacks import joint_pgd
from training.adversarial import eval_mode


def robust_mixup_batch(
    model: nn.Module, flow: nn.Module, images: torch.Tensor, labels: torch.Tensor, num_classes: int,
    eps: float, eta: float, steps: int, alpha: float, generator: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(x', x̄, ȳ): interpolated pairs attacked in joint space, the clean interpolations, and their mixed soft labels (N, K)."""
    partner = torch.randperm(len(images), generator=generator)
    rng = np.random.default_rng(int(torch.randint(2**31 - 1, (1,), generator=generator)))
    lam = torch.from_numpy(rng.beta(alpha, alpha, size=len(images)).astype(np.float32))
    mixed = lam.view(-1, 1, 1, 1) * images + (1 - lam.view(-1, 1, 1, 1)) * images[partner]
    one_hot = F.one_hot(labels, num_classes).float()
    targets = lam.view(-1, 1) * one_hot + (1 - lam.view(-1, 1)) * one_hot[partner]
    with eval_mode(model):
        adversarial = joint_pgd(model, flow, mixed, targets, eps, eta, steps=steps, generator=generator, keep_best=False)
    return adversarial, mixed, targets
