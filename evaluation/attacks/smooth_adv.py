"""SmoothAdv (Salman, Yang, Li, Zhang, Zhang, Razenshteyn & Bubeck, "Provably Robust Deep Learning
via Adversarially Trained Smoothed Classifiers", NeurIPS 2019): an L2 attack on the smoothed soft
classifier rather than on the base classifier,

    G(x) = (1/m) Σᵢ softmax(f(x + δᵢ)),   δᵢ ~ N(0, σ²I),
    x' = argmax_{‖x' − x‖₂ ≤ ε} −log G(x')_y        (by L2 PGD, ``evaluation.attacks.pgd``).

The noise draws are the model's own: a Pipeline with the gaussian transform draws fresh noise on
every call, so the m draws are m copies of each image in one call. Maximising the loss of the
averaged probabilities, not the average of per-draw losses, is what makes it stronger than EOT
against a smoothed classifier (Salman et al., Section 3).

>>> x_adv = smooth_adv(model, images, labels, eps=torch.full((len(images),), 0.5), steps=20, samples=16)
>>> bool(((x_adv - images).flatten(1).norm(dim=1) <= 0.5 + 1e-5).all())
True
"""

from __future__ import annotations

import torch
from torch import nn

from evaluation.attacks.pgd import pgd


class SmoothedSoftClassifier(nn.Module):
    """log G(x): the log of the base model's softmax averaged over ``samples`` of its own random draws."""

    def __init__(self, model: nn.Module, samples: int) -> None:
        super().__init__()
        self.model, self.samples = model, samples

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        probabilities = self.model(images.repeat_interleave(self.samples, dim=0)).softmax(dim=1)
        return probabilities.view(len(images), self.samples, -1).mean(dim=1).clamp_min(1e-12).log()


def smooth_adv(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, eps: float | torch.Tensor, steps: int = 20,
               samples: int = 16, generator: torch.Generator | None = None) -> torch.Tensor:
    """Adversarial images (N, C, H, W) in [0, 1] within L2 radius ``eps`` (one for all, or one per image) of ``images``,
    each the iterate with the highest −log G(x')_y found; ``labels`` are the classes to move away from."""
    return pgd(SmoothedSoftClassifier(model, samples), images, labels, eps=eps, steps=steps, norm="l2", generator=generator)
