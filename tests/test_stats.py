"""Stats from fixed samples: every expected value is worked out by hand from the definition."""

import math

import numpy as np
import pytest

from gpteval.measure.stats import BOOTSTRAP_RESAMPLES, Stats

SAMPLES = [1, 2, 3, 4, 100]


def test_fixed_samples_exact_values():
    s = Stats(SAMPLES)
    assert s.n == 5
    assert s.median == 3.0
    assert s.mean == 22.0  # 110 / 5
    # deviations -21, -20, -19, -18, 78: squares sum to 7610; / (n - 1) = 1902.5
    assert s.stdev == math.sqrt(1902.5)
    # linear interpolation: q1 at rank 1 -> 2, q3 at rank 3 -> 4
    assert (s.q1, s.q3, s.iqr) == (2.0, 4.0, 2.0)
    # p90 at rank 0.9 * 4 = 3.6: 4 + 0.6 * 96 = 61.6; p99 at rank 3.96: 4 + 0.96 * 96 = 96.16
    assert s.p90 == pytest.approx(61.6, abs=1e-12)
    assert s.p99 == pytest.approx(96.16, abs=1e-12)
    assert (s.min, s.max) == (1.0, 100.0)


def test_ci95_of_median_hand_derived():
    # A resample's median is 100 when >= 3 of its 5 draws are 100: P(Bin(5, 0.2) >= 3) =
    # 0.0579 > 2.5 %, so the 97.5th percentile of the bootstrap medians is 100; by the same
    # count the 2.5th percentile is 1.
    assert Stats(SAMPLES).ci95_median == (1.0, 100.0)
    # two samples: resample medians are 1, 1.5 or 2 with probabilities 1/4, 1/2, 1/4
    assert Stats([1, 2]).ci95_median == (1.0, 2.0)
    assert Stats([7.5] * 4).ci95_median == (7.5, 7.5)


def test_ci95_matches_the_definition_and_is_seeded():
    x = np.arange(1.0, 31.0) ** 1.5  # skewed, 30 distinct values
    for seed in (0, 3):
        rng = np.random.default_rng(seed)
        medians = np.median(x[rng.integers(0, x.size, size=(BOOTSTRAP_RESAMPLES, x.size))], axis=1)
        expected = tuple(float(v) for v in np.percentile(medians, [2.5, 97.5]))
        assert Stats(x, seed=seed).ci95_median == expected
    assert Stats(x, seed=0).ci95_median == Stats(list(x), seed=0).ci95_median
    assert Stats(x, seed=0).ci95_median != Stats(x, seed=3).ci95_median
    lo, hi = Stats(x).ci95_median
    assert lo < Stats(x).median < hi


def test_even_count_and_unsorted_input():
    s = Stats([4, 1, 3, 2])
    assert s.median == 2.5
    assert (s.q1, s.q3) == (1.75, 3.25)  # ranks 0.75 and 2.25
    assert s.p90 == pytest.approx(3.7, abs=1e-12)  # rank 2.7: 3 + 0.7


def test_single_sample():
    d = Stats([5.0]).as_dict()
    assert d == {"n": 1, "median": 5.0, "mean": 5.0, "stdev": 0.0, "iqr": 0.0, "p90": 5.0,
                 "p99": 5.0, "min": 5.0, "max": 5.0, "ci95_lo": 5.0, "ci95_hi": 5.0}


def test_as_dict_keys_and_plain_types():
    d = Stats(SAMPLES).as_dict()
    assert list(d) == ["n", "median", "mean", "stdev", "iqr", "p90", "p99", "min", "max",
                       "ci95_lo", "ci95_hi"]
    assert type(d["n"]) is int
    assert all(type(v) is float for k, v in d.items() if k != "n")
    assert Stats(SAMPLES).samples == [1.0, 2.0, 3.0, 4.0, 100.0]


@pytest.mark.parametrize("bad", [[], [1.0, float("nan")], [float("inf")]])
def test_rejects_empty_and_non_finite(bad):
    with pytest.raises(ValueError):
        Stats(bad)


def test_statistics_are_documented():
    for name in ("n", "median", "mean", "stdev", "iqr", "p90", "p99", "min", "max",
                 "ci95_median"):
        assert getattr(Stats, name).__doc__, name
