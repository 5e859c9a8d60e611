"""Statistics of raw samples (after pytest-benchmark's `Stats`): pure, no I/O.

A `Stats` is built from the raw samples of one measurement (for example TTFT in
milliseconds, one sample per repeat).  Every statistic is a cached property whose
docstring is its definition, so a number in a report means exactly one thing.
Percentiles use linear interpolation between order statistics (numpy's default,
"type 7" of Hyndman & Fan).
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cached_property

import numpy as np

BOOTSTRAP_RESAMPLES = 2000
_BOOTSTRAP_CHUNK = 250  # resamples drawn at a time, so memory stays small for long sample lists


class Stats:
    """Summary statistics of `samples`; the bootstrap is seeded, so equal inputs give equal
    outputs on every machine."""

    def __init__(self, samples: Sequence[float], seed: int = 0) -> None:
        values = np.asarray([float(s) for s in samples], dtype=np.float64)
        if values.size == 0:
            raise ValueError("Stats needs at least one sample")
        if not np.all(np.isfinite(values)):
            raise ValueError("Stats samples must be finite numbers")
        self._values = values
        self.samples: list[float] = values.tolist()
        self.seed = seed

    def __repr__(self) -> str:
        return f"Stats(n={self.n}, median={self.median:.6g}, iqr={self.iqr:.6g})"

    def _percentile(self, q: float) -> float:
        return float(np.percentile(self._values, q))

    @cached_property
    def n(self) -> int:
        """Number of samples."""
        return int(self._values.size)

    @cached_property
    def median(self) -> float:
        """Middle value of the sorted samples (mean of the two middle ones when n is even)."""
        return float(np.median(self._values))

    @cached_property
    def mean(self) -> float:
        """Arithmetic mean: sum of samples / n."""
        return float(np.mean(self._values))

    @cached_property
    def stdev(self) -> float:
        """Sample standard deviation, sqrt(sum((x - mean)^2) / (n - 1)); 0.0 when n == 1
        (undefined there, and 0.0 keeps results.json valid JSON)."""
        if self.n < 2:
            return 0.0
        return float(np.std(self._values, ddof=1))

    @cached_property
    def q1(self) -> float:
        """First quartile: the 25th percentile (linear interpolation)."""
        return self._percentile(25)

    @cached_property
    def q3(self) -> float:
        """Third quartile: the 75th percentile (linear interpolation)."""
        return self._percentile(75)

    @cached_property
    def iqr(self) -> float:
        """Interquartile range, q3 - q1."""
        return self.q3 - self.q1

    @cached_property
    def p90(self) -> float:
        """90th percentile (linear interpolation between order statistics)."""
        return self._percentile(90)

    @cached_property
    def p99(self) -> float:
        """99th percentile (linear interpolation between order statistics)."""
        return self._percentile(99)

    @cached_property
    def min(self) -> float:
        """Smallest sample."""
        return float(self._values.min())

    @cached_property
    def max(self) -> float:
        """Largest sample."""
        return float(self._values.max())

    @cached_property
    def ci95_median(self) -> tuple[float, float]:
        """95 % bootstrap confidence interval of the median (percentile method): draw 2000
        resamples of size n with replacement from `numpy.random.default_rng(seed)`, take the
        median of each, and return their 2.5th and 97.5th percentiles."""
        rng = np.random.default_rng(self.seed)
        medians = []
        left = BOOTSTRAP_RESAMPLES
        while left:
            k = min(_BOOTSTRAP_CHUNK, left)
            idx = rng.integers(0, self.n, size=(k, self.n))
            medians.append(np.median(self._values[idx], axis=1))
            left -= k
        lo, hi = np.percentile(np.concatenate(medians), [2.5, 97.5])
        return float(lo), float(hi)

    def as_dict(self) -> dict:
        """The statistics as plain floats, for results.json and renderers."""
        lo, hi = self.ci95_median
        return {"n": self.n, "median": self.median, "mean": self.mean, "stdev": self.stdev,
                "iqr": self.iqr, "p90": self.p90, "p99": self.p99, "min": self.min,
                "max": self.max, "ci95_lo": lo, "ci95_hi": hi}
