"""A fixed stratified train/validation/test split, identical on every machine."""

from __future__ import annotations

import hashlib

import numpy as np


def stratified_split(
    labels: np.ndarray, val_fraction: float, test_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Index arrays (sorted) of the train, validation and test parts, stratified by class.

    Each class is shuffled by numpy's PCG64 generator (stable across platforms and numpy versions)
    and cut into test, validation and train in that order, so every split keeps the class balance.
    """
    rng = np.random.default_rng(seed)
    parts: tuple[list[np.ndarray], list[np.ndarray], list[np.ndarray]] = ([], [], [])
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        n_test = round(len(idx) * test_fraction)
        n_val = round(len(idx) * val_fraction)
        parts[2].append(idx[:n_test])
        parts[1].append(idx[n_test : n_test + n_val])
        parts[0].append(idx[n_test + n_val :])
    train, val, test = (np.sort(np.concatenate(p)).astype(np.int64) for p in parts)
    return train, val, test


def split_fingerprint(*index_arrays: np.ndarray) -> str:
    """A short hash of the split, recorded with every run so results on different machines compare."""
    h = hashlib.sha256()
    for a in index_arrays:
        h.update(np.ascontiguousarray(a, dtype=np.int64).tobytes())
        h.update(b"|")
    return h.hexdigest()[:12]
