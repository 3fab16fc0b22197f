"""Randomized smoothing's certificate (Cohen, Rosenfeld & Kolter, ICML 2019) from class counts:
the statistics both the offline ``purifier certify`` and the server's ``certify=true`` use.

For a base classifier f under Gaussian noise of σ, the smoothed classifier g(x) = argmax_c
P[f(x + δ) = c] is certified from two independent samples of f's predictions: ĉ = the most
frequent class among n0 selection draws; p = the one-sided (1 − α) Clopper–Pearson lower bound of
ĉ's count among n estimation draws; if p > ½, g(x) = ĉ within every L2 ball of radius
R = σ · Φ⁻¹(p), with probability at least 1 − α; otherwise g abstains. PREDICT estimates g(x) alone:
the top class of n draws unless a two-sided binomial test of the top two counts has p-value > α.

``certify`` runs it on any engine that maps (images, mask, noise) to logits: the served runtime's
pipeline, or the PyTorch Pipeline's ``forward_with`` offline, so both certify the same way.

>>> certificate_from_counts(np.array([0, 100]), np.array([3, 997]), sigma=0.25, alpha=0.001).prediction
1
>>> certificate = certify(runtime.pipeline_logits, transform, image, n0=100, n=10_000, alpha=0.001, num_classes=10,
...                       rng=np.random.default_rng(0))
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy.stats import beta, binomtest, norm


Engine = Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]  # (images, mask, noise) -> logits, all NCHW float32


@dataclass(frozen=True)
class Certificate:
    """The smoothed prediction of one image and its certified L2 radius (both None when g abstains)."""

    prediction: int | None
    radius: float | None
    count: int  # estimation draws that gave the selected class
    samples: int


def lower_confidence_bound(count: int, samples: int, alpha: float) -> float:
    """One-sided (1 − α) Clopper–Pearson lower bound of a binomial proportion count/samples."""
    return 0.0 if count == 0 else float(beta.ppf(alpha, count, samples - count + 1))


def certificate_from_counts(selection: np.ndarray, estimation: np.ndarray, sigma: float, alpha: float) -> Certificate:
    """CERTIFY's decision from the per-class counts of the selection and the (independent) estimation draws."""
    selected, samples = int(np.argmax(selection)), int(estimation.sum())
    count = int(estimation[selected])
    bound = lower_confidence_bound(count, samples, alpha)
    if bound <= 0.5:
        return Certificate(None, None, count, samples)
    return Certificate(selected, sigma * float(norm.ppf(bound)), count, samples)


def largest_radius(sigma: float, samples: int, alpha: float) -> float:
    """The largest radius CERTIFY can return from ``samples`` estimation draws: σ · Φ⁻¹(α^(1/n)), every draw agreeing."""
    return sigma * float(norm.ppf(alpha ** (1 / samples)))


def prediction_from_counts(counts: np.ndarray, alpha: float) -> int | None:
    """PREDICT's decision from the per-class counts of n draws: the top class, or None (abstain) when it does not beat the
    runner-up at level α (two-sided binomial test); a returned class differs from g(x) with probability at most α."""
    runner_up, top = np.argsort(counts)[-2:]
    first, second = int(counts[top]), int(counts[runner_up])
    return int(top) if binomtest(first, first + second, 0.5).pvalue <= alpha else None


def class_counts(engine: Engine, transform, image: np.ndarray, samples: int, num_classes: int, batch: int,
                 rng: np.random.Generator) -> np.ndarray:
    """How often the base classifier predicts each class on ``samples`` fresh draws of ``transform`` (a
    ``purifier.transforms.RandomTransform``, drawn from ``rng``) around one float32 image (C, H, W)."""
    counts = np.zeros(num_classes, dtype=np.int64)
    for start in range(0, samples, batch):
        size = min(batch, samples - start)
        mask, noise = transform.sample(size, image.shape, rng)
        logits = engine(np.repeat(image[None], size, axis=0), mask, noise)
        counts += np.bincount(logits.argmax(axis=1), minlength=num_classes)
    return counts


def certify(engine: Engine, transform, image: np.ndarray, n0: int, n: int, alpha: float, num_classes: int, rng: np.random.Generator,
            batch: int = 128) -> Certificate:
    """CERTIFY for one float32 image (C, H, W): n0 selection draws, then n independent estimation draws."""
    selection = class_counts(engine, transform, image, n0, num_classes, batch, rng)
    estimation = class_counts(engine, transform, image, n, num_classes, batch, rng)
    return certificate_from_counts(selection, estimation, transform.noise_std, alpha)
