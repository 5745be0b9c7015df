"""Student's t-interval, computed exactly without scipy: what ``kdrun compare`` puts around a
paired improvement (distilled − baseline of the same seed)."""

from __future__ import annotations

import math
import statistics
from functools import lru_cache
from typing import Sequence


def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the incomplete beta function (modified Lentz; Numerical Recipes 6.4)."""
    tiny, qab, qap, qam = 1e-300, a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 500):
        m2 = 2 * m
        for numerator in (m * (b - m) * x / ((qam + m2) * (a + m2)), -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))):
            d = 1.0 + numerator * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + numerator / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1.0) < 1e-15:
            break
    return h


def regularized_beta(x: float, a: float, b: float) -> float:
    """I_x(a, b), the regularised incomplete beta function."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * _betacf(a, b, x) / a
    return 1.0 - math.exp(log_front) * _betacf(b, a, 1.0 - x) / b


def t_two_sided_p(t: float, df: int) -> float:
    """P(|T| > t) for Student's t with ``df`` degrees of freedom: I_{df/(df+t²)}(df/2, 1/2)."""
    return regularized_beta(df / (df + t * t), df / 2.0, 0.5)


@lru_cache(maxsize=None)
def t_critical(df: int, confidence: float = 0.95) -> float:
    """The two-sided critical value t_{(1+confidence)/2, df}, computed exactly (no scipy): bisection
    on t of the tail probability above, which falls monotonically in t. Exact to ~1e-12."""
    if df < 1:
        raise ValueError(f"degrees of freedom must be at least 1, got {df}")
    tail = 1.0 - confidence
    low, high = 0.0, 1.0
    while t_two_sided_p(high, df) > tail:
        low, high = high, high * 2.0
    for _ in range(200):
        middle = (low + high) / 2.0
        if t_two_sided_p(middle, df) > tail:
            low = middle
        else:
            high = middle
        if high - low < 1e-13 * high:
            break
    return (low + high) / 2.0


def mean_ci(values: Sequence[float], confidence: float = 0.95) -> tuple[float, float, float]:
    """Mean and the t-interval around it: mean ± t_{0.975, n-1} · s / √n, where s is the sample
    standard deviation (n − 1 in the denominator). Used on paired differences (distilled −
    baseline of the same seed), so the seed-to-seed spread they share cancels. With one value
    the interval is (nan, nan)."""
    n = len(values)
    mean = statistics.fmean(values)
    if n < 2:
        return mean, math.nan, math.nan
    half = t_critical(n - 1, confidence) * statistics.stdev(values) / math.sqrt(n)
    return mean, mean - half, mean + half
