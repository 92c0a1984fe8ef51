"""Paired statistics over seeds for `hsd compare`: mean +/- std, the area under a learning curve, and the
paired t-interval and t-test of a method against a baseline (standard library only).

The Student-t distribution function is the exact finite series for an integer number of degrees of
freedom (Abramowitz & Stegun 26.7.3-26.7.4), so no special-function library is needed: paired
differences over n seeds have n - 1 degrees of freedom, always an integer.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass

from hsd.core.checks import is_int


def mean_std(values) -> tuple[float, float]:
    """Mean and sample standard deviation (n - 1); NaN, NaN when empty, std 0 for one value. None is skipped."""
    values = [float(v) for v in values if v is not None]
    if not values:
        return math.nan, math.nan
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def curve_auc(curve) -> float | None:
    """Normalised area under a learning curve [(step, value), ...]: the trapezoid integral over
    [first step, last step] divided by its length, i.e. the curve's mean value over training."""
    points = sorted((float(s), float(v)) for s, v in curve)
    if not points:
        return None
    if len(points) == 1 or points[-1][0] == points[0][0]:
        return points[0][1]
    area = sum((s1 - s0) * (v0 + v1) / 2 for (s0, v0), (s1, v1) in zip(points, points[1:]))
    return area / (points[-1][0] - points[0][0])


def student_t_cdf(t: float, df: int) -> float:
    """P(T <= t) for Student's t with an integer df >= 1, exactly. With theta = atan(t / sqrt(df)),
    A(t | df) = P(|T| <= |t|) is, for odd df,
        (2 / pi) (theta + sin(theta) (cos(theta) + 2/3 cos^3(theta) + ... + (2*4...(df-3))/(1*3...(df-2)) cos^(df-2)(theta)))
    (just 2 theta / pi for df = 1), and, for even df,
        sin(theta) (1 + 1/2 cos^2(theta) + (1*3)/(2*4) cos^4(theta) + ... + (1*3...(df-3))/(2*4...(df-2)) cos^(df-2)(theta)).
    """
    if not is_int(df) or df < 1:
        raise ValueError(f"df must be an int >= 1, got {df!r}")
    if math.isnan(t):
        return math.nan
    if math.isinf(t):
        return 1.0 if t > 0 else 0.0
    theta = math.atan(abs(t) / math.sqrt(df))
    sin, cos2 = math.sin(theta), math.cos(theta) ** 2
    if df % 2:
        term, series = math.cos(theta), 0.0
        for k in range(1, (df - 1) // 2 + 1):  # terms cos^(2k-1) with coefficient prod (2j)/(2j+1)
            series += term
            term *= cos2 * (2 * k) / (2 * k + 1)
        a = 2 / math.pi * (theta + sin * series) if df > 1 else 2 * theta / math.pi
    else:
        term, series = 1.0, 0.0
        for k in range(1, df // 2 + 1):  # terms cos^(2k-2) with coefficient prod (2j-1)/(2j)
            series += term
            term *= cos2 * (2 * k - 1) / (2 * k)
        a = sin * series
    return 0.5 + a / 2 if t >= 0 else 0.5 - a / 2


def student_t_quantile(q: float, df: int) -> float:
    """The t with P(T <= t) = q, by bisection on `student_t_cdf` (to 1e-12)."""
    if not 0.0 < q < 1.0:
        raise ValueError(f"q must be in (0, 1), got {q!r}")
    low, high = -1.0, 1.0
    while student_t_cdf(low, df) > q:
        low *= 2
    while student_t_cdf(high, df) < q:
        high *= 2
    while high - low > 1e-12 * max(1.0, abs(high)):
        mid = (low + high) / 2
        low, high = (mid, high) if student_t_cdf(mid, df) < q else (low, mid)
    return (low + high) / 2


@dataclass(frozen=True)
class PairedDifference:
    """Method minus baseline over n paired seeds: mean difference, its 95% (or `confidence`) t-interval,
    the t statistic and the two-sided paired t-test p-value (H0: mean difference 0)."""

    n: int
    mean: float
    std: float
    low: float
    high: float
    t: float
    p_value: float
    confidence: float = 0.95


def paired_difference(values, baseline, confidence: float = 0.95) -> PairedDifference:
    """d_i = values_i - baseline_i; mean d, s_d, t = mean / (s_d / sqrt(n)) on n - 1 degrees of freedom,
    interval mean -/+ t_{(1+confidence)/2, n-1} s_d / sqrt(n), p = 2 P(T > |t|). NaN with fewer than 2
    pairs; with s_d = 0, the interval is the point and p is 0 (1 when every difference is 0)."""
    values, baseline = list(values), list(baseline)
    if len(values) != len(baseline):
        raise ValueError(f"values and baseline must pair up, got {len(values)} and {len(baseline)}")
    diffs = [float(a) - float(b) for a, b in zip(values, baseline, strict=True)]
    n = len(diffs)
    if n < 2:
        mean = diffs[0] if diffs else math.nan
        return PairedDifference(n, mean, math.nan, math.nan, math.nan, math.nan, math.nan, confidence)
    mean, std = statistics.fmean(diffs), statistics.stdev(diffs)
    if std == 0.0:
        p = 1.0 if mean == 0.0 else 0.0
        t = 0.0 if mean == 0.0 else math.copysign(math.inf, mean)
        return PairedDifference(n, mean, 0.0, mean, mean, t, p, confidence)
    se = std / math.sqrt(n)
    t = mean / se
    half = student_t_quantile((1 + confidence) / 2, n - 1) * se
    p = 2 * (1 - student_t_cdf(abs(t), n - 1))
    return PairedDifference(n, mean, std, mean - half, mean + half, t, p, confidence)
