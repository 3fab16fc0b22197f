"""Square Attack (Andriushchenko, Croce, Flammarion & Hein, ECCV 2020): a score-based,
gradient-free random search, from the AutoAttack package (``pyautoattack``).

Threat models: L∞ or L2 ball of radius ε around x, intersected with [0, 1]. Each query asks the
model for logits once and keeps a random square-shaped update if it lowers the margin
f_y(x') − max_{k≠y} f_k(x'); an image stops at its first success or after ``queries`` queries.
It uses no gradient of the defence, so when it breaks images that gradient attacks left
standing, the defence's gradients were masked, not its decisions robust. Against a stochastic
Pipeline every query is a fresh draw of the random transform, as a resubmitting attacker sees.

>>> x_adv = square(model, images, labels, eps=0.1, queries=5000)
>>> bool((x_adv - images).abs().max() <= 0.1 + 1e-6)
True
"""

from __future__ import annotations

import torch
from torch import nn

NORMS = {"linf": "Linf", "l2": "L2"}


def square(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, eps: float, queries: int = 5000, norm: str = "linf",
           seed: int = 0) -> torch.Tensor:
    """Adversarial images (N, C, H, W) in [0, 1]: each image's best point found, whether or not it succeeded.

    The attack's random choices come from torch's global generator, seeded with ``seed`` inside a
    forked generator state, so the caller's random stream is left as it was.
    """
    from pyautoattack.square import SquareAttack

    if norm not in NORMS:
        raise ValueError(f"unknown norm {norm!r}; use one of {tuple(NORMS)}")
    attack = SquareAttack(model, norm=NORMS[norm], n_queries=queries, eps=eps, p_init=0.8, seed=seed)
    attack.init_hyperparam(images)
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        torch.manual_seed(seed)
        _, adversarial = attack.attack_single_run(images.detach().clone(), labels.detach().clone())
    return adversarial.detach()
