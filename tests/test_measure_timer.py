"""The repeat rule and the clock, driven by a fake clock so counts are exact."""

import pytest

from gpteval.measure import timer


class FakeTime:
    """A host clock that only moves when the code under test does work."""

    def __init__(self, step: float) -> None:
        self.t = 0.0
        self.step = step
        self.log: list[str] = []
        self.calls = 0

    def now(self) -> float:
        self.log.append("now")
        return self.t

    def work(self) -> int:
        self.log.append("fn")
        self.calls += 1
        self.t += self.step  # 0.25: exact in binary, so sums compare exactly
        return self.calls

    def sync(self) -> None:
        self.log.append("sync")


@pytest.fixture
def fake(monkeypatch):
    f = FakeTime(0.25)
    monkeypatch.setattr(timer, "_now", f.now)
    return f


def test_time_rule_dominates(fake):
    # 4 calls reach 1.0 s; min_count 3 is already met by then
    kept = timer.repeat(fake.work, warmup=2, min_count=3, min_time_s=1.0)
    assert kept == [3, 4, 5, 6]  # the 2 warm-up results are dropped
    assert fake.calls == 6


def test_count_rule_dominates(fake):
    kept = timer.repeat(fake.work, warmup=0, min_count=7, min_time_s=1.0)
    assert len(kept) == 7 and fake.calls == 7


def test_max_count_caps(fake):
    kept = timer.repeat(fake.work, warmup=1, min_count=2, min_time_s=100.0, max_count=3)
    assert kept == [2, 3, 4]


def test_bad_arguments():
    with pytest.raises(ValueError):
        timer.repeat(lambda: None, warmup=0, min_count=0, min_time_s=0)
    with pytest.raises(ValueError):
        timer.repeat(lambda: None, warmup=0, min_count=3, min_time_s=0, max_count=2)


def test_repeat_timed_syncs_before_reading_the_clock(fake):
    samples = timer.repeat_timed(fake.work, fake.sync, warmup=1, min_count=2, min_time_s=0.0)
    assert samples == [0.25, 0.25]
    # one timed call: sync, clock, fn, sync, clock (the repeat rule reads the clock between)
    first_call = fake.log[:5]
    assert first_call == ["sync", "now", "fn", "sync", "now"]
    assert fake.calls == 3


def test_clock_intervals(fake):
    clock = timer.Clock("cpu", fake.sync)
    clock.mark()
    fake.work()
    clock.mark()
    fake.work()
    fake.work()
    clock.mark()
    assert clock.read() == [0.25, 0.5]
    assert clock.read() == []  # reading clears the marks


class FakeEvent:
    """Stands in for torch.cuda.Event: its timestamp is the fake clock's time at record()."""

    clock: FakeTime

    def __init__(self, enable_timing=False):
        assert enable_timing
        self.t = None

    def record(self):
        self.t = self.clock.t

    def synchronize(self):
        self.clock.log.append("event-sync")

    def elapsed_time(self, end):  # milliseconds, as CUDA reports
        return (end.t - self.t) * 1000.0


def test_cuda_clock_uses_events_and_syncs_only_to_read(fake, monkeypatch):
    import torch

    FakeEvent.clock = fake
    monkeypatch.setattr(torch.cuda, "Event", FakeEvent)
    clock = timer.Clock("cuda:0", fake.sync)
    clock.mark()
    fake.work()
    clock.mark()
    fake.work()
    clock.mark()
    assert "sync" not in fake.log  # marking does not stall the device
    assert clock.read() == [0.25, 0.25]
    assert fake.log[-2:] == ["sync", "event-sync"]
