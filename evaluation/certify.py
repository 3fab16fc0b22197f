"""Certified L2 robustness by randomized smoothing (Cohen, Rosenfeld & Kolter, ICML 2019) of a
bundle whose random transform is ``gaussian``: its pipeline is the base classifier
f(x) = classifier(purifier(clip(x + δ))), δ ~ N(0, σ²I) (denoised smoothing, Salman et al., NeurIPS
2020, when the purifier is a denoiser), and the smoothed classifier is

    g(x) = argmax_c P_δ[ f(x) = c ].

CERTIFY: ĉ = the most frequent class among n0 selection draws; p = the one-sided (1 − α)
Clopper–Pearson lower bound of ĉ's count among n fresh estimation draws; if p > ½, g(x) = ĉ for
every x' with ‖x' − x‖₂ < R = σ · Φ⁻¹(p), else abstain. The radius is in [0, 1] pixel units. With
probability ≥ 1 − α a returned certificate is correct, whatever the attacker does (the statistics:
``purifier.smoothing``).

>>> certificate = certify(model, image, sigma=0.25, n0=100, n=10_000, alpha=0.001)
>>> certificate.prediction, certificate.radius       # (None, None) when g abstains
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from purifier.smoothing import Certificate, certificate_from_counts

PROTOCOL = {"n0": 100, "n": 10_000, "alpha": 0.001, "images": 500, "radii": (0.25, 0.5, 0.75, 1.0)}


@torch.no_grad()
def class_counts(model: nn.Module, image: torch.Tensor, samples: int, num_classes: int, batch: int = 128) -> np.ndarray:
    """How often each class is predicted on ``samples`` fresh draws of the model's noise around one image (C, H, W)."""
    counts = np.zeros(num_classes, dtype=np.int64)
    remaining = samples
    while remaining > 0:
        size = min(batch, remaining)
        predictions = model(image.unsqueeze(0).expand(size, *image.shape)).argmax(1)
        counts += np.bincount(predictions.numpy(), minlength=num_classes)
        remaining -= size
    return counts


def certify(model: nn.Module, image: torch.Tensor, sigma: float, n0: int, n: int, alpha: float, num_classes: int,
            batch: int = 128) -> Certificate:
    """Cohen et al.'s CERTIFY for one image, with ``model`` drawing fresh Gaussian noise on every call."""
    selection = class_counts(model, image, n0, num_classes, batch)
    return certificate_from_counts(selection, class_counts(model, image, n, num_classes, batch), sigma, alpha)


def certified_accuracy(certificates: list[Certificate], labels: list[int], radius: float) -> float:
    """Fraction of images whose smoothed prediction is right and certified at least to ``radius``."""
    right = sum(1 for c, y in zip(certificates, labels) if c.prediction == y and c.radius is not None and c.radius >= radius)
    return right / max(len(labels), 1)
