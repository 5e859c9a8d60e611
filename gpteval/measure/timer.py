"""Clocks and the repeat loop every timing in gpteval goes through.

A `Clock` puts marks on the device's timeline and returns the seconds between them.
On the CPU a mark is `sync()` followed by `time.perf_counter()`.  On CUDA a mark
records a `torch.cuda.Event` on the current stream, so marking does not stall the GPU;
the events are read after `sync()` and an event synchronize, when the marks are read.
Work an engine runs on a stream of its own must be finished when its call returns
(ONNX Runtime and TensorRT engines return host tensors or use torch's current stream).

`repeat` is the stopping rule (after optimum-benchmark and pytest-benchmark): warm-up
calls first, discarded; then calls until BOTH a minimum count AND a minimum time are
reached, optionally capped by a maximum count.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

_now = time.perf_counter  # the host clock (a module attribute so tests can drive it)


def _no_sync() -> None:
    return None


class Clock:
    """Marks on one device's timeline; `read()` gives the seconds between consecutive marks."""

    def __init__(self, device: str = "cpu", sync: Callable[[], None] | None = None) -> None:
        self.device = device
        self.sync = sync or _no_sync
        self.cuda = device.startswith("cuda")
        self._marks: list = []

    def mark(self) -> None:
        if self.cuda:
            import torch

            event = torch.cuda.Event(enable_timing=True)
            event.record()
            self._marks.append(event)
        else:
            self.sync()
            self._marks.append(_now())

    def read(self) -> list[float]:
        """Seconds between consecutive marks since the last read; clears the marks."""
        marks, self._marks = self._marks, []
        if len(marks) < 2:
            return []
        if self.cuda:
            self.sync()
            marks[-1].synchronize()
            # elapsed_time is in milliseconds
            return [a.elapsed_time(b) / 1000.0 for a, b in itertools.pairwise(marks)]
        return [b - a for a, b in itertools.pairwise(marks)]


def repeat(fn: Callable[[], T], warmup: int, min_count: int, min_time_s: float,
           max_count: int | None = None) -> list[T]:
    """Call `fn()` `warmup` times and drop the results, then keep calling until at least
    `min_count` calls AND at least `min_time_s` seconds (wall clock, from the first kept
    call) are both reached, or `max_count` calls are made; return the kept results."""
    if warmup < 0 or min_count < 1:
        raise ValueError(f"need warmup >= 0 and min_count >= 1, got {warmup}, {min_count}")
    if max_count is not None and max_count < min_count:
        raise ValueError(f"max_count {max_count} is below min_count {min_count}")
    for _ in range(warmup):
        fn()
    kept: list[T] = []
    start = _now()
    while True:
        kept.append(fn())
        if max_count is not None and len(kept) >= max_count:
            return kept
        if len(kept) >= min_count and _now() - start >= min_time_s:
            return kept


def repeat_timed(fn: Callable[[], object], sync: Callable[[], None], warmup: int,
                 min_count: int, min_time_s: float, max_count: int | None = None,
                 device: str = "cpu") -> list[float]:
    """Seconds taken by each kept call of `fn()` under the `repeat` rule; device work is
    synchronized (`sync`) before each clock read, or timed with CUDA events on a GPU."""
    clock = Clock(device, sync)

    def timed_call() -> float:
        clock.mark()
        fn()
        clock.mark()
        return clock.read()[0]

    return repeat(timed_call, warmup, min_count, min_time_s, max_count)
