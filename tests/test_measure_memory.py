"""Peak RSS against an outside witness (/usr/bin/time -v), and the per-phase reset."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from gpteval.measure.memory import (
    peak_device_mb,
    peak_rss_mb,
    reset_peak_device,
    reset_peak_rss,
    track_phase,
)

ROOT = Path(__file__).resolve().parents[1]
MIB = 1024 * 1024
linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"),
                                reason="VmHWM and clear_refs are Linux features")

# allocates and touches 300 MiB (bytes * n writes every page), then reports its own peak
CHILD = """
from gpteval.measure.memory import peak_rss_mb
block = b"\\x01" * (300 * 1024 * 1024)
print(peak_rss_mb())
"""


@linux_only
def test_peak_rss_matches_usr_bin_time():
    if not os.access("/usr/bin/time", os.X_OK):
        pytest.skip("/usr/bin/time (GNU time) is not installed; apt-get install time")
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.run(["/usr/bin/time", "-v", sys.executable, "-c", CHILD], capture_output=True,
                          text=True, env=env, timeout=60)
    assert proc.returncode == 0, proc.stderr
    ours = float(proc.stdout.strip())
    m = re.search(r"Maximum resident set size \(kbytes\): (\d+)", proc.stderr)
    assert m, proc.stderr
    witness = int(m.group(1)) / 1024.0
    assert ours > 300.0  # the block alone is 300 MiB
    assert abs(ours - witness) <= 0.05 * witness, (ours, witness)


@linux_only
def test_reset_lowers_the_high_water_mark():
    if not reset_peak_rss():
        pytest.skip("/proc/self/clear_refs is not writable here")
    before = peak_rss_mb()
    block = b"\x01" * (200 * MIB)
    high = peak_rss_mb()
    assert high >= before + 190
    del block
    assert peak_rss_mb() == pytest.approx(high, abs=5)  # without a reset the mark stays
    assert reset_peak_rss()
    low = peak_rss_mb()
    assert low <= high - 150


@linux_only
def test_track_phase_reports_the_phase_peak():
    with track_phase("cpu") as outer:
        block = b"\x01" * (120 * MIB)
        del block
    with track_phase("cpu") as later:
        pass
    assert outer["s"] >= 0 and outer["peak_device_mb"] is None
    assert outer["peak_rss_mb"] >= later["peak_rss_mb"] + 100


def test_cpu_has_no_device_allocator():
    assert peak_device_mb("cpu") is None
    reset_peak_device("cpu")  # a no-op, not an error


@linux_only
def test_a_block_excluded_from_the_peak_leaves_the_mark_as_it_was():
    """What a bandwidth probe allocates beside a variant is not the variant's memory; what
    the variant allocates before and after it still is."""
    from gpteval.measure.memory import excluded_from_peak

    if not reset_peak_rss():
        pytest.skip("/proc/self/clear_refs is not writable here")
    earlier = b"\x01" * (150 * MIB)
    del earlier
    high = peak_rss_mb()
    with excluded_from_peak() as excluded:
        assert excluded
        probe = b"\x01" * (300 * MIB)
        del probe
    assert peak_rss_mb() == pytest.approx(high, abs=20)  # neither raised nor lost
    later = b"\x01" * (400 * MIB)
    del later
    assert peak_rss_mb() >= high + 200
