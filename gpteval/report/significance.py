"""Statistics over two sets of raw timing samples: is B really slower than A, and by how much?

Pure functions over numbers (numpy only, no scipy), shared by the report (speedup CI) and
the compare gate (regression tests).  Deterministic: every resampling takes a seed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

BOOTSTRAP_RESAMPLES = 2000
_CHUNK = 250  # resamples drawn per block: bounds memory for long sample lists


@dataclass(frozen=True)
class MannWhitney:
    """Mann–Whitney U test of x against y.

    u: U statistic of x (number of pairs with x > y, ties counting one half);
    z: normal score after tie and continuity correction; p: p-value for `alternative`.
    """

    u: float
    z: float
    p: float
    alternative: str


def _normal_sf(z: float) -> float:
    """P(Z > z) for a standard normal Z."""
    return 0.5 * math.erfc(z / math.sqrt(2.0))


def mann_whitney_u(x, y, alternative: str = "greater") -> MannWhitney:
    """Mann–Whitney U test with the normal approximation, tie correction and continuity correction.

    `alternative="greater"` tests whether x tends to be larger than y (e.g. current step times
    larger than the baseline's = slower).  Matches
    `scipy.stats.mannwhitneyu(x, y, alternative=..., method="asymptotic", use_continuity=True)`.
    """
    if alternative not in ("greater", "less", "two-sided"):
        raise ValueError(f"alternative must be 'greater', 'less' or 'two-sided', not {alternative!r}")
    x = np.asarray(x, dtype=np.float64).ravel()
    y = np.asarray(y, dtype=np.float64).ravel()
    n1, n2 = len(x), len(y)
    if n1 == 0 or n2 == 0:
        raise ValueError("mann_whitney_u needs at least one sample on each side")
    both = np.concatenate([x, y])
    n = n1 + n2
    # average ranks (1-based) with ties sharing the mean of the ranks they span
    _, inverse, counts = np.unique(both, return_inverse=True, return_counts=True)
    upper = np.cumsum(counts)
    mean_rank = upper - (counts - 1) / 2.0
    ranks = mean_rank[inverse]
    u1 = float(ranks[:n1].sum() - n1 * (n1 + 1) / 2.0)
    mu = n1 * n2 / 2.0
    tie_term = float((counts.astype(np.float64) ** 3 - counts).sum()) / (n * (n - 1)) if n > 1 else 0.0
    sigma = math.sqrt(n1 * n2 / 12.0 * ((n + 1) - tie_term))
    if alternative == "greater":
        numerator = u1 - mu - 0.5
    elif alternative == "less":
        numerator = mu - u1 - 0.5
    else:
        numerator = abs(u1 - mu) - 0.5
    if sigma == 0.0:  # every sample identical: no evidence either way
        return MannWhitney(u1, 0.0, 1.0, alternative)
    z = numerator / sigma
    p = _normal_sf(z) * (2.0 if alternative == "two-sided" else 1.0)
    return MannWhitney(u1, z, min(max(p, 0.0), 1.0), alternative)


def _bootstrap_medians(values: np.ndarray, rng: np.random.Generator, resamples: int) -> np.ndarray:
    out = np.empty(resamples)
    for start in range(0, resamples, _CHUNK):
        stop = min(start + _CHUNK, resamples)
        idx = rng.integers(0, len(values), size=(stop - start, len(values)))
        out[start:stop] = np.median(values[idx], axis=1)
    return out


def ratio_of_medians(numerator, denominator) -> float:
    """median(numerator) / median(denominator)."""
    return float(np.median(np.asarray(numerator, float)) / np.median(np.asarray(denominator, float)))


def bootstrap_ratio_ci(numerator, denominator, seed: int = 0, level: float = 0.95,
                       resamples: int = BOOTSTRAP_RESAMPLES) -> tuple[float, float]:
    """Percentile bootstrap CI of median(numerator) / median(denominator).

    The two sample sets are resampled independently (they come from separate runs);
    `resamples` ratios, numpy default_rng(seed): the same inputs always give the same CI.
    """
    a = np.asarray(numerator, dtype=np.float64).ravel()
    b = np.asarray(denominator, dtype=np.float64).ravel()
    if len(a) == 0 or len(b) == 0:
        raise ValueError("bootstrap_ratio_ci needs at least one sample on each side")
    rng = np.random.default_rng(seed)
    ratios = _bootstrap_medians(a, rng, resamples) / _bootstrap_medians(b, rng, resamples)
    tail = (1.0 - level) / 2.0 * 100.0
    lo, hi = np.percentile(ratios, [tail, 100.0 - tail])
    return float(lo), float(hi)
