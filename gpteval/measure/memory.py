"""Peak memory of this process (host) and of the CUDA caching allocator (device).

Units: MB here means MiB (2**20 bytes), the unit `ps`, `top` and `/usr/bin/time` use.

peak_rss_mb: the high-water mark of the resident set size, VmHWM in /proc/self/status.
Linux can reset that mark: writing "5" to /proc/self/clear_refs sets VmHWM to the current
RSS, which is how one process measures the peak of each phase (load, optimize, measure)
separately.  Elsewhere the fallback is getrusage's ru_maxrss, the peak since the process
started, which cannot be reset.  Reading /proc is measuring the process, not file output.

peak_device_mb: `torch.cuda.max_memory_allocated` (bytes in live tensors) and
`max_memory_reserved` (bytes the caching allocator holds) since the last reset.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

MIB = 1024 * 1024


_carried_kib = 0  # the mark from before an excluded block (see excluded_from_peak)


def reset_peak_rss() -> bool:
    """Reset the process's RSS high-water mark to its current RSS; False where the OS
    cannot (not Linux, or /proc/self/clear_refs not writable)."""
    global _carried_kib
    _carried_kib = 0
    return _clear_hwm()


def _clear_hwm() -> bool:
    if not sys.platform.startswith("linux"):
        return False
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


@contextmanager
def excluded_from_peak() -> Iterator[bool]:
    """A block whose memory is not the measured work's (a bandwidth probe's buffers, freed
    at its end): peak_rss_mb afterwards is what it would have been without the block.
    Yields False where the mark cannot be reset; the caller then leaves the block out."""
    global _carried_kib
    before = _vm_hwm_kib()
    if before is None or not _clear_hwm():
        yield False
        return
    _carried_kib = max(_carried_kib, before)
    try:
        yield True
    finally:
        _clear_hwm()  # restarts from the RSS after the block; the earlier mark is carried


def _proc_kib(path: str, key: str) -> int | None:
    """A "Key:   123456 kB" value of a /proc file, in KiB; None where absent."""
    try:
        with open(path) as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def _vm_hwm_kib() -> int | None:
    return _proc_kib("/proc/self/status", "VmHWM")


def rss_mb() -> float | None:
    """Resident set size of this process now (VmRSS), MiB; None where /proc is absent."""
    kib = _proc_kib("/proc/self/status", "VmRSS")
    return kib / 1024.0 if kib is not None else None


def host_memory_mb() -> tuple[float | None, float | None]:
    """(total, available) host memory in MiB from /proc/meminfo; (None, None) elsewhere.
    Available is the kernel's estimate of what can be allocated without swapping."""
    total = _proc_kib("/proc/meminfo", "MemTotal")
    available = _proc_kib("/proc/meminfo", "MemAvailable")
    return (total / 1024.0 if total is not None else None,
            available / 1024.0 if available is not None else None)


def peak_rss_mb() -> float:
    """Peak resident set size of this process in MiB since the last `reset_peak_rss()`
    (VmHWM), or since the process started where VmHWM is unavailable (ru_maxrss)."""
    kib = _vm_hwm_kib()
    if kib is not None:
        return max(kib, _carried_kib) / 1024.0
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # ru_maxrss is KiB on Linux and the BSDs, bytes on macOS
    return peak / MIB if sys.platform == "darwin" else peak / 1024.0


def reset_peak_device(device: str) -> None:
    """Reset the CUDA allocator's peak counters; nothing to do for other devices."""
    if device.startswith("cuda"):
        import torch

        torch.cuda.reset_peak_memory_stats(device)


def peak_device_mb(device: str) -> dict | None:
    """{'allocated', 'reserved'}: peak MiB of the CUDA caching allocator since the last
    `reset_peak_device`; None for devices without one (the CPU)."""
    if not device.startswith("cuda"):
        return None
    import torch

    return {"allocated": torch.cuda.max_memory_allocated(device) / MIB,
            "reserved": torch.cuda.max_memory_reserved(device) / MIB}


@contextmanager
def track_phase(device: str = "cpu") -> Iterator[dict]:
    """Measure one phase: `with track_phase(dev) as phase: ...` fills `phase` on exit with
    's' (wall seconds), 'peak_rss_mb' and 'peak_device_mb' of the code inside."""
    phase: dict = {}
    reset_peak_rss()
    reset_peak_device(device)
    start = time.perf_counter()
    try:
        yield phase
    finally:
        if device.startswith("cuda"):
            import torch

            torch.cuda.synchronize(device)
        phase["s"] = time.perf_counter() - start
        phase["peak_rss_mb"] = peak_rss_mb()
        phase["peak_device_mb"] = peak_device_mb(device)
