"""stats.py: the incomplete beta, t and F distributions against scipy; intervals, the sign-flip
test on cases with known answers, the verdict sentences, the spread comparison, the edge cases."""

import ast
import itertools
import math
from pathlib import Path

import numpy as np
import pytest
import scipy.special
import scipy.stats

from backprop_bench.report import stats
from backprop_bench.report.stats import (
    f_sf,
    mean_interval,
    paired_test,
    regularized_beta,
    sign_flip_p,
    spread,
    t_quantile,
)

# --- the distributions ------------------------------------------------------------------------


def test_imports_only_numpy_and_the_standard_library():
    tree = ast.parse(Path(stats.__file__).read_text())
    names = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    names |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert {name.split(".")[0] for name in names} <= {"__future__", "math", "collections", "dataclasses", "numpy"}


@pytest.mark.parametrize("a", [0.5, 1.0, 2.5, 10.0, 30.0, 200.0])
@pytest.mark.parametrize("b", [0.5, 1.0, 3.0, 7.5, 50.0])
def test_regularized_beta_matches_scipy(a, b):
    for x in np.linspace(0.0, 1.0, 51):
        want = scipy.special.betainc(a, b, x)
        assert regularized_beta(a, b, float(x)) == pytest.approx(want, rel=1e-11, abs=1e-15), (a, b, x)


def test_regularized_beta_rejects_bad_parameters():
    with pytest.raises(ValueError, match="a > 0 and b > 0"):
        regularized_beta(0.0, 1.0, 0.5)


@pytest.mark.parametrize("df", range(1, 61))
def test_t_quantile_matches_scipy(df):
    for q in (1e-9, 0.001, 0.025, 0.1, 0.6, 0.75, 0.9, 0.95, 0.975, 0.995, 0.9995):
        assert t_quantile(q, df) == pytest.approx(scipy.stats.t.ppf(q, df), rel=1e-10), q


def test_t_quantile_near_the_centre_matches_closed_forms():
    # scipy's own ppf loses digits here, so compare with the exact df = 1 and df = 2 quantiles.
    assert t_quantile(0.5, 7) == 0.0
    for q in (0.5000001, 0.5001, 0.51, 0.4999):
        assert t_quantile(q, 1) == pytest.approx(math.tan(math.pi * (q - 0.5)), rel=1e-12)
        assert t_quantile(q, 2) == pytest.approx((2 * q - 1) / math.sqrt(2 * q * (1 - q)), rel=1e-12)


@pytest.mark.parametrize("q, df", [(0.0, 3), (1.0, 3), (0.9, 0)])
def test_t_quantile_rejects_bad_arguments(q, df):
    with pytest.raises(ValueError, match="0 < q < 1 and df > 0"):
        t_quantile(q, df)


def test_f_sf_matches_scipy():
    for dfn, dfd in [(1, 1), (2, 5), (3, 8), (4, 20), (10, 100)]:
        for f in (0.01, 0.5, 1.0, 3.1, 12.0, 200.0):
            assert f_sf(f, dfn, dfd) == pytest.approx(scipy.stats.f.sf(f, dfn, dfd), rel=1e-10)
    assert f_sf(0.0, 2, 5) == 1.0
    assert f_sf(math.inf, 2, 5) == 0.0


# --- intervals --------------------------------------------------------------------------------

SAMPLES = {
    2: [0.9712, 0.9748],
    3: [1.21, 1.35, 1.18],
    5: [45210.0, 44980.5, 45620.25, 45102.0, 45333.0],
    10: np.random.default_rng(1).normal(0.05, 0.01, 10),
    30: np.random.default_rng(2).normal(3.0, 0.4, 30),
}


@pytest.mark.parametrize("n", sorted(SAMPLES))
@pytest.mark.parametrize("confidence", [0.95, 0.99])
def test_mean_interval_matches_scipy(n, confidence):
    x = np.asarray(SAMPLES[n])
    low, high = scipy.stats.t.interval(confidence, n - 1, loc=x.mean(), scale=scipy.stats.sem(x))
    got = mean_interval(x, confidence)
    assert (got.n, got.confidence) == (n, confidence)
    assert got.mean == pytest.approx(x.mean(), rel=1e-14)
    assert got.low == pytest.approx(low, rel=1e-11)
    assert got.high == pytest.approx(high, rel=1e-11)
    assert got.half_width == pytest.approx((high - low) / 2, rel=1e-10)
    assert got.describe().endswith(f"({confidence:.0%} CI, {n} seeds)")


def test_mean_interval_of_one_seed_has_no_interval():
    got = mean_interval([0.98])
    assert got.mean == 0.98 and got.n == 1
    assert math.isnan(got.low) and math.isnan(got.high) and math.isnan(got.half_width)
    assert got.describe() == "0.98 (one seed: no interval)"


def test_mean_interval_of_equal_values_has_zero_width():
    got = mean_interval([0.1, 0.1, 0.1])
    assert (got.mean, got.low, got.high, got.half_width) == (0.1, 0.1, 0.1, 0.0)
    assert got.describe() == "0.1 ± 0 (95% CI, 3 seeds)"


@pytest.mark.parametrize(
    "values, message",
    [
        ([0.9, 0.8, float("nan")], r"accuracy: contains NaN at index 2"),
        ([0.9, float("inf")], r"accuracy: contains an infinite value at index 1"),
        ([], r"accuracy: no values"),
        ([[0.9, 0.8]], r"accuracy: expected a 1-D sequence of per-seed values, got shape \(1, 2\)"),
    ],
)
def test_mean_interval_rejects_bad_values(values, message):
    with pytest.raises(ValueError, match=message):
        mean_interval(values, name="accuracy")


def test_mean_interval_rejects_bad_confidence():
    with pytest.raises(ValueError, match="confidence must lie in"):
        mean_interval([1.0, 2.0], confidence=95)


# --- the sign-flip test -----------------------------------------------------------------------


@pytest.mark.parametrize("n, p", [(1, 1.0), (2, 0.5), (3, 0.25), (5, 0.0625), (6, 0.03125), (10, 2 / 1024)])
def test_all_positive_differences_give_the_smallest_p(n, p):
    # Only the observed pattern and its mirror image reach |sum|: 2 of 2^n.
    assert sign_flip_p(np.linspace(0.5, 2.0, n)) == (p, True)
    assert stats.smallest_p(n) == p


def test_symmetric_differences_give_p_one():
    assert sign_flip_p([1.0, -1.0, 2.0, -2.0]) == (1.0, True)


def test_mixed_signs_counted_by_hand():
    # d = (4, 2, 1, -1), |sum| = 6. With +4: 4 + 2 ± 1 ± 1 = 8, 6, 6, 4 and 4 − 2 ± 1 ± 1 = 4, 2, 2, 0;
    # so 3 patterns reach 6, and their 3 mirror images: 6 of 16.
    assert sign_flip_p([4.0, 2.0, 1.0, -1.0]) == (6 / 16, True)
    # d = (3, 1, -1), |sum| = 3: 3 ± 1 ± 1 = 5, 3, 3, 1; 3 of 4, doubled: 6 of 8.
    assert sign_flip_p([3.0, 1.0, -1.0]) == (0.75, True)


def test_exact_test_matches_brute_force_enumeration():
    d = np.random.default_rng(3).normal(0.2, 1.0, 9)
    sums = [abs(sum(s * x for s, x in zip(signs, d))) for signs in itertools.product((1, -1), repeat=d.size)]
    want = sum(s >= abs(d.sum()) - 1e-12 for s in sums) / len(sums)
    assert sign_flip_p(d) == (want, True)


def binomial_p(n: int, n_positive: int) -> float:
    """Exact p for n differences of ±1 with n_positive of them +1: P(|2K − n| ≥ |2·n_positive − n|)."""
    gap = abs(2 * n_positive - n)
    return sum(math.comb(n, k) for k in range(n + 1) if abs(2 * k - n) >= gap) / 2**n


def test_exact_branch_at_its_largest_n():
    d = [1.0] * 10 + [-1.0] * 6
    p, exact = sign_flip_p(d)
    assert exact and p == pytest.approx(binomial_p(16, 10), rel=1e-15)
    assert p == pytest.approx(1 - (math.comb(16, 7) + math.comb(16, 8) + math.comb(16, 9)) / 2**16, rel=1e-15)


@pytest.mark.parametrize("n_positive, tolerance", [(12, 0.01), (15, 0.004)])
def test_monte_carlo_branch_is_close_to_the_exact_answer(n_positive, tolerance):
    d = [1.0] * n_positive + [-1.0] * (20 - n_positive)  # 2^20 patterns: sampled, not enumerated
    p, exact = sign_flip_p(d, n_resamples=100_000, seed=7)
    assert not exact
    assert p == pytest.approx(binomial_p(20, n_positive), abs=tolerance)  # about 6 standard errors


def test_monte_carlo_branch_is_reproducible_with_a_seed():
    d = np.random.default_rng(4).normal(0.1, 1.0, 20)
    assert sign_flip_p(d, n_resamples=20_000, seed=11) == sign_flip_p(d, n_resamples=20_000, seed=11)
    assert sign_flip_p(d, n_resamples=20_000, seed=11) != sign_flip_p(d, n_resamples=20_000, seed=12)


def test_monte_carlo_p_value_is_never_zero():
    p, _ = sign_flip_p(np.arange(1.0, 21.0), n_resamples=1000, seed=0)
    assert p == 1 / 1001


# --- paired_test and its verdicts -------------------------------------------------------------


def test_paired_test_pairs_by_seed():
    seq = [0.980, 0.975, 0.982, 0.979, 0.981]
    par = [0.978, 0.976, 0.979, 0.977, 0.977]
    got = paired_test(seq, par)
    d = np.subtract(seq, par)
    assert got.mean_diff == pytest.approx(d.mean()) and got.n == 5 and got.exact
    assert got.interval == mean_interval(d)
    assert got.p_value == sign_flip_p(d)[0]


def test_verdict_when_three_seeds_cannot_reach_the_level():
    got = paired_test([3.0, 2.0, 4.0], [1.0, 1.0, 1.0])
    assert got.p_value == 0.25
    assert got.verdict == (
        "not distinguishable from zero at 3 seeds (p = 0.25; the smallest p-value 3 paired seeds can give is 0.25)"
    )


def test_verdict_at_five_seeds_all_positive():
    got = paired_test([2.0, 3.0, 4.0, 5.0, 6.0], [1.0] * 5)
    assert got.p_value == 0.0625
    assert got.verdict == (
        "not distinguishable from zero at 5 seeds (p = 0.0625; the smallest p-value 5 paired seeds can give is 0.0625)"
    )
    # At the 90 % level, 5 seeds are enough.
    assert paired_test([2.0, 3.0, 4.0, 5.0, 6.0], [1.0] * 5, confidence=0.9).verdict == (
        "distinguishable from zero (p = 0.0625, 5 seeds)"
    )


def test_verdict_at_six_seeds_all_positive_is_distinguishable():
    got = paired_test([1.1, 1.2, 1.3, 1.4, 1.5, 1.6], [1.0] * 6)
    assert got.p_value == 0.03125
    assert got.verdict == "distinguishable from zero (p = 0.0312, 6 seeds)"


def test_verdict_when_enough_seeds_but_no_difference():
    got = paired_test([1.0, 3.0, 2.0, 5.0, 4.0, 6.0], [2.0, 2.0, 3.0, 4.0, 5.0, 5.0])
    assert got.p_value == 1.0
    assert got.verdict == "not distinguishable from zero at 6 seeds (p = 1)"


def test_all_differences_zero():
    got = paired_test([0.5, 0.7, 0.9], [0.5, 0.7, 0.9])
    assert got.p_value == 1.0 and got.mean_diff == 0.0 and got.interval.half_width == 0.0
    assert got.verdict == "not distinguishable from zero at 3 seeds (p = 1; every difference is zero)"


def test_one_paired_seed():
    got = paired_test([2.0], [1.0])
    assert got.p_value == 1.0 and got.mean_diff == 1.0
    assert math.isnan(got.interval.half_width)
    assert got.interval.describe() == "1 (one seed: no interval)"
    assert got.verdict == (
        "not distinguishable from zero at 1 seed (p = 1; the smallest p-value 1 paired seed can give is 1)"
    )


def test_paired_test_rejects_mismatched_lengths_and_nans():
    with pytest.raises(ValueError, match="3 sequential vs 2 parallel"):
        paired_test([1.0, 2.0, 3.0], [1.0, 2.0])
    with pytest.raises(ValueError, match="parallel: contains NaN at index 1"):
        paired_test([1.0, 2.0], [1.0, float("nan")])


# --- spread across frameworks vs across seeds -------------------------------------------------

GROUPS = {
    "numpy": [0.9801, 0.9795, 0.9810, 0.9788],
    "torch": [0.9790, 0.9802, 0.9781],
    "tensorflow": [0.9770, 0.9779, 0.9768, 0.9781, 0.9775],
}


def test_spread_matches_f_oneway():
    got = spread(GROUPS)
    want = scipy.stats.f_oneway(*GROUPS.values())
    assert got.f == pytest.approx(want.statistic, rel=1e-10)
    assert got.p_value == pytest.approx(want.pvalue, rel=1e-10)
    assert (got.df_between, got.df_within) == (2, 9)
    assert got.between_sd == pytest.approx(np.std([np.mean(v) for v in GROUPS.values()], ddof=1), rel=1e-12)
    ssw = sum(((np.asarray(v) - np.mean(v)) ** 2).sum() for v in GROUPS.values())
    assert got.within_sd == pytest.approx(math.sqrt(ssw / 9), rel=1e-12)
    assert got.p_value < 0.05 and "across frameworks larger than across seeds" in got.describe()


def test_spread_when_frameworks_agree():
    groups = {"numpy": [1.0, 2.0, 3.0], "torch": [1.5, 2.5, 1.0], "keras": [2.0, 3.0, 1.2]}
    got = spread(groups)
    assert got.p_value == pytest.approx(scipy.stats.f_oneway(*groups.values()).pvalue, rel=1e-10)
    assert got.p_value > 0.05 and "not distinguishably larger" in got.describe()


def test_spread_edge_cases():
    one_seed = spread({"numpy": [1.0], "torch": [2.0]})
    assert math.isnan(one_seed.within_sd) and math.isnan(one_seed.p_value) and one_seed.df_within == 0
    assert "one seed per framework" in one_seed.describe()
    no_noise = spread({"numpy": [1.0, 1.0], "torch": [2.0, 2.0]})
    assert (no_noise.within_sd, no_noise.f, no_noise.p_value) == (0.0, math.inf, 0.0)
    equal = spread({"numpy": [0.1, 0.1], "torch": [0.1, 0.1, 0.1]})
    assert (equal.between_sd, equal.within_sd) == (0.0, 0.0) and math.isnan(equal.f)
    assert "every value is equal" in equal.describe()
    with pytest.raises(ValueError, match="at least two groups"):
        spread({"numpy": [1.0, 2.0]})
    with pytest.raises(ValueError, match="torch: contains NaN at index 0"):
        spread({"numpy": [1.0, 2.0], "torch": [float("nan"), 1.0]})
