"""Stratified selection: the one rule for the embedded test split, `data.subset` and the
validation split, so each keeps the class balance of the rows it is taken from."""

from __future__ import annotations

import numpy as np


def class_quota(y: np.ndarray, n_take: int) -> np.ndarray:
    """How many rows of each class to take so that n_take rows keep y's class shares.

    Largest-remainder rounding: each class gets floor(n_take * share), then the rows
    left over go to the classes with the largest fractional parts (lowest label first
    on ties). Returns (n_classes,) ints summing to n_take, none above its class count.
    """
    counts = np.bincount(y)
    if not 0 <= n_take <= len(y):
        raise ValueError(f"cannot take {n_take} rows from {len(y)}")
    exact = n_take * counts / max(len(y), 1)
    quota = np.floor(exact).astype(np.int64)
    left = n_take - int(quota.sum())
    by_remainder = np.argsort(-(exact - quota), kind="stable")  # stable: lowest label wins ties
    quota[by_remainder[:left]] += 1
    return quota


def stratified_split(y: np.ndarray, n_take: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Split row indices of y into (taken, rest), stratified by class.

    Which rows of a class are taken is random (from rng); both index arrays come back
    sorted, so the rows keep their original relative order.
    """
    y = np.asarray(y)
    quota = class_quota(y, n_take)
    taken = []
    for label, k in enumerate(quota):
        rows = np.flatnonzero(y == label)
        taken.append(rng.permutation(rows)[:k])
    take = np.sort(np.concatenate(taken)) if taken else np.empty(0, dtype=np.int64)
    rest = np.setdiff1d(np.arange(len(y)), take)  # sorted
    return take.astype(np.int64), rest.astype(np.int64)
