"""Statistics over seeds: intervals, paired sequential − parallel tests, spread comparison.

- ``mean_interval``: mean and Student t confidence interval, mean ± t(q, n−1)·s/√n.
- ``paired_test``: differences paired by seed, their t interval and a two-sided sign-flip
  permutation test (exact over all 2^n sign patterns for n ≤ 16, seeded Monte-Carlo above).
- ``spread``: between-framework sd of the means vs pooled within-framework sd, one-way ANOVA F.
The t and F distributions come from the regularized incomplete beta function I_x(a, b)
(Numerical Recipes' continued fraction, modified Lentz), so only numpy and math are needed.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

EXACT_MAX_N = 16  # 2^16 sign patterns is a 65536 x 16 matrix: cheap; beyond, sample instead
_TINY = 1e-300  # keeps Lentz's denominators off zero
_EPS = 1e-16
Values = Sequence[float] | np.ndarray


def regularized_beta(a: float, b: float, x: float) -> float:
    """I_x(a, b), the regularized incomplete beta function."""
    if not (a > 0 and b > 0):
        raise ValueError(f"regularized_beta needs a > 0 and b > 0, got a={a}, b={b}")
    if not 0.0 < x < 1.0:
        return 0.0 if x <= 0.0 else 1.0
    front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x))
    # The continued fraction converges fast only left of the mode; right of it use I_x(a,b) = 1 − I_{1−x}(b,a).
    if x < (a + 1.0) / (a + b + 2.0):
        return front * _beta_cf(a, b, x) / a
    return 1.0 - front * _beta_cf(b, a, 1.0 - x) / b


def _beta_cf(a: float, b: float, x: float) -> float:
    def nz(v: float) -> float:
        return v if abs(v) > _TINY else _TINY

    c, d = 1.0, 1.0 / nz(1.0 - (a + b) * x / (a + 1.0))
    h = d
    for m in range(1, 10_000):
        am = a + 2 * m  # the even and odd terms of the fraction, one Lentz update each
        for aa in (m * (b - m) * x / ((am - 1) * am), -(a + m) * (a + b + m) * x / (am * (am + 1))):
            d = 1.0 / nz(1.0 + aa * d)
            c = nz(1.0 + aa / c)
            h *= d * c
        if abs(d * c - 1.0) < _EPS:
            return h
    raise ArithmeticError(f"incomplete beta continued fraction did not converge (a={a}, b={b}, x={x})")


def _beta_inv(a: float, b: float, p: float) -> float:
    lo, hi = 0.0, 1.0
    while (mid := 0.5 * (lo + hi)) not in (lo, hi):  # I_x increases in x: bisect to adjacent floats
        lo, hi = (mid, hi) if regularized_beta(a, b, mid) < p else (lo, mid)
    return mid


def t_quantile(q: float, df: float) -> float:
    """The t with P(T ≤ t) = q, from P(|T| > t) = I_{df/(df+t²)}(df/2, ½) by bisection."""
    if not 0.0 < q < 1.0 or not df > 0:
        raise ValueError(f"t_quantile needs 0 < q < 1 and df > 0, got q={q}, df={df}")
    sign, tail = (-1.0, q) if q < 0.5 else (1.0, 1.0 - q)  # q itself, not 1 − (1 − q), for tiny q
    # Bisect in whichever of x = df/(df+t²) and 1 − x is small, so that it keeps its relative
    # precision: far in the tail x → 0, near the centre 1 − x → 0 (and |2q − 1| is exact there).
    if tail < 0.25:
        x = _beta_inv(df / 2.0, 0.5, 2.0 * tail)
        return sign * math.sqrt(df * (1.0 - x) / x)
    y = _beta_inv(0.5, df / 2.0, abs(2.0 * q - 1.0))
    return sign * math.sqrt(df * y / (1.0 - y))


def f_sf(f: float, dfn: float, dfd: float) -> float:
    """P(F > f) for the F(dfn, dfd) distribution: I_{dfd/(dfd+dfn·f)}(dfd/2, dfn/2); 0 for f = inf."""
    return 1.0 if f <= 0 else regularized_beta(dfd / 2.0, dfn / 2.0, dfd / (dfd + dfn * f))


def _values(values: Values, name: str) -> np.ndarray:
    a = np.asarray(values, dtype=float)
    if a.ndim != 1:
        raise ValueError(f"{name}: expected a 1-D sequence of per-seed values, got shape {a.shape}")
    if a.size == 0:
        raise ValueError(f"{name}: no values")
    for bad, what in ((np.isnan(a), "NaN"), (np.isinf(a), "an infinite value")):
        if bad.any():
            raise ValueError(f"{name}: contains {what} at index {int(np.argmax(bad))} (a failed or unfinished run?)")
    return a


@dataclass(frozen=True)
class Interval:
    """mean ± half_width over n seeds; low, high and half_width are nan for one seed."""

    mean: float
    low: float
    high: float
    half_width: float
    n: int
    confidence: float = 0.95

    def describe(self) -> str:
        if self.n == 1:
            return f"{self.mean:.6g} (one seed: no interval)"
        return f"{self.mean:.6g} ± {self.half_width:.6g} ({self.confidence:.0%} CI, {self.n} seeds)"


def mean_interval(values: Values, confidence: float = 0.95, name: str = "values") -> Interval:
    """Mean and Student t interval over seeds: mean ± t((1+confidence)/2, n−1) · s/√n, s with ddof=1."""
    a = _values(values, name)
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must lie in (0, 1), got {confidence}")
    n, mean = a.size, float(a.mean())
    if n == 1:
        return Interval(mean, math.nan, math.nan, math.nan, 1, confidence)
    if np.all(a == a[0]):  # exact: np.mean of equal floats can round off and leave a 1e-17 "spread"
        return Interval(float(a[0]), float(a[0]), float(a[0]), 0.0, n, confidence)
    half = t_quantile((1.0 + confidence) / 2.0, n - 1) * float(a.std(ddof=1)) / math.sqrt(n)
    return Interval(mean, mean - half, mean + half, half, n, confidence)


def smallest_p(n: int) -> float:
    """The smallest two-sided sign-flip p-value n paired seeds can give: 2/2^n."""
    return min(1.0, 2.0 / 2.0**n)


def sign_flip_p(diffs: Values, n_resamples: int = 100_000, seed: int = 0) -> tuple[float, bool]:
    """Two-sided sign-flip permutation p-value of mean(diffs) = 0, and whether it is exact."""
    d = _values(diffs, "differences")
    n = d.size
    if n <= EXACT_MAX_N:
        bits = (np.arange(2**n)[:, None] >> np.arange(n)) & 1
        signs, exact = 1.0 - 2.0 * bits, True
    else:
        signs, exact = 1.0 - 2.0 * np.random.default_rng(seed).integers(0, 2, size=(n_resamples, n)), False
    observed = abs(d.sum())
    # signs @ d adds in another order than d.sum(): the observed pattern and its mirror must tie, not round below.
    hits = int(np.count_nonzero(np.abs(signs @ d) >= observed - 1e-12 * np.abs(d).sum()))
    # Monte-Carlo counts the observed pattern itself ((k+1)/(B+1)): a valid p-value, never 0.
    return (hits / 2**n, True) if exact else ((hits + 1) / (n_resamples + 1), False)


@dataclass(frozen=True)
class PairedTest:
    """sequential − parallel paired by seed: mean difference, its interval, sign-flip p-value, verdict."""

    mean_diff: float
    interval: Interval
    p_value: float
    n: int
    exact: bool
    verdict: str


def _verdict(p: float, n: int, alpha: float, all_zero: bool) -> str:
    plural = "s" if n != 1 else ""
    seeds = f"{n} seed{plural}"
    if p <= alpha:
        return f"distinguishable from zero (p = {p:.3g}, {seeds})"
    if all_zero:
        return f"not distinguishable from zero at {seeds} (p = {p:.3g}; every difference is zero)"
    if smallest_p(n) > alpha:  # no outcome could reach the level: more seeds needed, not a null result
        floor = f"the smallest p-value {n} paired seed{plural} can give is {smallest_p(n):.3g}"
        return f"not distinguishable from zero at {seeds} (p = {p:.3g}; {floor})"
    return f"not distinguishable from zero at {seeds} (p = {p:.3g})"


def paired_test(
    sequential: Values, parallel: Values, confidence: float = 0.95, n_resamples: int = 100_000, seed: int = 0
) -> PairedTest:
    """sequential[i] − parallel[i] (same seed i): t interval and sign-flip test at level 1 − confidence."""
    s, p = _values(sequential, "sequential"), _values(parallel, "parallel")
    if s.size != p.size:
        raise ValueError(f"paired values need one of each per seed: {s.size} sequential vs {p.size} parallel")
    d = s - p
    interval = mean_interval(d, confidence, name="differences")
    p_value, exact = sign_flip_p(d, n_resamples, seed)
    verdict = _verdict(p_value, d.size, 1.0 - confidence, bool(np.all(d == 0)))
    return PairedTest(interval.mean, interval, p_value, d.size, exact, verdict)


@dataclass(frozen=True)
class Spread:
    """Spread across frameworks (sd of their means) vs across seeds (pooled within sd), with ANOVA F."""

    between_sd: float
    within_sd: float
    f: float
    p_value: float
    df_between: int
    df_within: int

    def describe(self, alpha: float = 0.05) -> str:
        sds = f"sd of framework means {self.between_sd:.6g}, pooled sd within {self.within_sd:.6g}"
        if self.df_within == 0:
            return f"{sds}: one seed per framework, no within-framework spread to compare with"
        if math.isnan(self.f):
            return f"{sds}: every value is equal, nothing to compare"
        word = "larger" if self.p_value <= alpha else "not distinguishably larger"
        return f"{sds}: across frameworks {word} than across seeds (F = {self.f:.3g}, p = {self.p_value:.3g})"


def spread(groups: Mapping[str, Values]) -> Spread:
    """framework -> per-seed values: F = (SSB/(k−1)) / (SSW/(N−k)), p = P(F(k−1, N−k) > F)."""
    arrays = {name: _values(v, name) for name, v in groups.items()}
    if len(arrays) < 2:
        raise ValueError(f"spread needs at least two groups, got {len(arrays)}")
    means = np.array([a.mean() for a in arrays.values()])
    sizes = np.array([a.size for a in arrays.values()])
    pooled = np.concatenate(list(arrays.values()))
    ssb = float(np.sum(sizes * (means - pooled.mean()) ** 2))
    ssw = float(sum(np.sum((a - a.mean()) ** 2) for a in arrays.values()))
    dfb, dfw = len(arrays) - 1, int(sizes.sum()) - len(arrays)
    between_sd = float(means.std(ddof=1))
    if dfw == 0:
        return Spread(between_sd, math.nan, math.nan, math.nan, dfb, 0)
    if np.all(pooled == pooled[0]):  # checked exactly: rounding in the means must not fake an F
        return Spread(0.0, 0.0, math.nan, math.nan, dfb, dfw)
    if ssw == 0.0:  # no seed noise at all: any framework difference is infinitely significant
        return Spread(between_sd, 0.0, math.inf, 0.0, dfb, dfw)
    f = (ssb / dfb) / (ssw / dfw)
    return Spread(between_sd, math.sqrt(ssw / dfw), f, f_sf(f, dfb, dfw), dfb, dfw)
