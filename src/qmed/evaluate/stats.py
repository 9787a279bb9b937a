"""Statistics shared by every score qmed reports: ONE percentile bootstrap.

Resamples are drawn with replacement from a generator seeded with `seed`, so the same inputs
always give the same interval. They come in (k, n) index blocks, so a vectorised statistic can
score many resamples at once while memory stays bounded."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np


def bootstrap_indices(n: int, n_boot: int, seed: int = 0, max_elements: int = 2_000_000) -> Iterator[np.ndarray]:
    """Yield (k, n) int arrays of resample indices into range(n), `n_boot` rows in all.

    k is at most max_elements // n (at least 1), which bounds the memory of one block."""
    rng = np.random.default_rng(seed)
    step = max(1, max_elements // max(1, n))
    for s in range(0, n_boot, step):
        yield rng.integers(0, n, size=(min(step, n_boot - s), n))


def percentile_interval(samples, ci: float = 0.95) -> tuple[float, float]:
    """The central `ci` interval of the finite bootstrap values in `samples`; (nan, nan) when none."""
    b = np.asarray(samples, dtype=np.float64).ravel()
    b = b[np.isfinite(b)]
    if b.size == 0:
        return float("nan"), float("nan")
    a = (1.0 - ci) / 2.0
    lo, hi = np.quantile(b, [a, 1.0 - a])
    return float(lo), float(hi)


def bootstrap_means(values, n_boot: int = 2000, seed: int = 0) -> np.ndarray:
    """The means of `n_boot` resamples of `values` (NaNs dropped); empty when no value is left."""
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    if v.size == 0 or n_boot <= 0:
        return np.zeros(0)
    return np.concatenate([v[idx].mean(axis=1) for idx in bootstrap_indices(v.size, n_boot, seed)])


def bootstrap_ci(values, n_boot: int = 2000, seed: int = 0, ci: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap CI of the mean of `values` (NaNs dropped); (nan, nan) when empty."""
    return percentile_interval(bootstrap_means(values, n_boot, seed), ci)
