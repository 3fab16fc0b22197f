"""Randomized smoothing's certificate (Cohen, Rosenfeld & Kolter, ICML 2019) from class counts:
the statistics both the offline ``purifier certify`` and the server's ``certify=true`` use.

For a base classifier f under Gaussian noise of σ, the smoothed classifier g(x) = argmax_c
P[f(x + δ) = c] is certified from two independent samples of f's predictions: ĉ = the most
frequent class among n0 selection draws; p = the one-sided (1 − α) Clopper–Pearson lower bound of
ĉ's count among n estimation draws; if p > ½, g(x) = ĉ within every L2 ball of radius
R = σ · Φ⁻¹(p), with probability at least 1 − α; otherwise g abstains. PREDICT estimates g(x) alone:
the top class of n draws unless a two-sided binomial test of the top two counts has p-value > α.

>>> certificate_from_counts(np.array([0, 100]), np.array([3, 997]), sigma=0.25, alpha=0.001).prediction
1
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.stats import beta, binomtest, norm


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


def prediction_from_counts(counts: np.ndarray, alpha: float) -> int | None:
    """PREDICT's decision from the per-class counts of n draws: the top class, or None (abstain) when it does not beat the
    runner-up at level α (two-sided binomial test); a returned class differs from g(x) with probability at most α."""
    runner_up, top = np.argsort(counts)[-2:]
    first, second = int(counts[top]), int(counts[runner_up])
    return int(top) if binomtest(first, first + second, 0.5).pvalue <= alpha else None
