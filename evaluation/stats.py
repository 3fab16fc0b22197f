"""Uncertainty of accuracy figures and paired comparisons between two systems on the same images.

Wilson score interval (Wilson, 1927) for k correct of n at confidence 1 − α (z = Φ⁻¹(1 − α/2)):

    centre = (p̂ + z²/2n) / (1 + z²/n),   half-width = z / (1 + z²/n) · √(p̂(1 − p̂)/n + z²/4n²)

Exact McNemar test (a two-sided sign test on the discordant pairs): with b images right only
under A and c right only under B, p = min(1, 2 · P[Binomial(b + c, ½) ≤ min(b, c)]).

Paired t-test (Student, 1908) for per-image scores that are counts, not bits (how many corruption
conditions an image survives): with d_i = a_i − b_i over n images, t = d̄ / (s_d / √n) on n − 1
degrees of freedom, two-sided. It tests the mean, which a sign test would not: a system can score
higher on more images and still lose on average.

>>> lo, hi = wilson(231, 500)
>>> round(lo, 3), round(hi, 3)
(0.419, 0.506)
>>> mcnemar([True, True, False], [False, True, False]).p_value
1.0
>>> paired_t_test([30, 12, 7], [30, 12, 7]).p_value
1.0
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

from scipy.stats import t as student_t

Z_95 = 1.959963984540054


def wilson(correct: int, total: int, z: float = Z_95) -> tuple[float, float]:
    """95% (by default) Wilson score interval of the proportion correct/total; (0, 1) when total is 0."""
    if total <= 0:
        return 0.0, 1.0
    p = correct / total
    denominator = 1 + z * z / total
    centre = (p + z * z / (2 * total)) / denominator
    half = z / denominator * math.sqrt(p * (1 - p) / total + z * z / (4 * total * total))
    low = 0.0 if correct == 0 else max(0.0, centre - half)  # exact at the ends, where rounding would leave ±1e-17
    high = 1.0 if correct == total else min(1.0, centre + half)
    return low, high


@dataclass(frozen=True)
class PairedTest:
    """A paired test of A against B on the same images (exact McNemar unless made by ``paired_t_test``)."""

    images: int
    only_a: int  # right under A, wrong under B (for scores: higher under A)
    only_b: int  # right under B, wrong under A (for scores: higher under B)
    p_value: float

    def describe(self, a: str = "A", b: str = "B") -> str:
        verdict = "significant" if self.p_value < 0.05 else "not significant"
        noun = "image" if self.only_a == 1 else "images"
        return (f"{self.only_a} {noun} right only under {a}, {self.only_b} only under {b} "
                f"(of {self.images}; exact McNemar p = {format_p(self.p_value)}, {verdict} at 5%)")


def with_interval(value: float, images: int, digits: int = 1) -> str:
    """'46.2% [41.9, 50.6]': a proportion of ``images`` with its 95% Wilson interval, in points."""
    low, high = wilson(round(value * images), images)
    return f"{value:.{digits}%} [{low * 100:.1f}, {high * 100:.1f}]"


def format_p(value: float) -> str:
    """A p-value for a table: '< 1e-300' where the exact tail underflows a float."""
    return "< 1e-300" if value == 0 else f"{value:.3g}"


def mcnemar(a: Sequence[bool], b: Sequence[bool]) -> PairedTest:
    """Exact McNemar test on per-image outcomes of two systems over the same images, in the same order."""
    if len(a) != len(b):
        raise ValueError(f"paired outcomes need the same images: {len(a)} vs {len(b)}")
    only_a = sum(1 for x, y in zip(a, b) if x and not y)
    only_b = sum(1 for x, y in zip(a, b) if y and not x)
    discordant = only_a + only_b
    tail = sum(math.comb(discordant, k) for k in range(min(only_a, only_b) + 1)) / 2 ** discordant
    return PairedTest(len(a), only_a, only_b, min(1.0, 2 * tail))


def paired_t_test(a: Sequence[float], b: Sequence[float]) -> PairedTest:
    """Two-sided paired t-test of the mean per-image score of two systems over the same images, in the same order."""
    if len(a) != len(b) or len(a) < 2:
        raise ValueError(f"a paired t-test needs the same images, at least two: {len(a)} vs {len(b)}")
    differences = [x - y for x, y in zip(a, b)]
    spread = statistics.stdev(differences)
    mean = statistics.fmean(differences)
    if spread == 0:
        p_value = 1.0 if mean == 0 else 0.0
    else:
        p_value = float(min(1.0, 2 * student_t.sf(abs(mean) / (spread / math.sqrt(len(a))), len(a) - 1)))
    return PairedTest(len(a), sum(d > 0 for d in differences), sum(d < 0 for d in differences), p_value)
