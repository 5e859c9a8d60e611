"""Host steal time from /proc/stat, and how a report flags a disturbed measurement."""

import pytest

from gpteval.measure import host
from gpteval.report.markdown import _steal_line

STAT = "cpu  100 5 50 1000 10 0 2 {steal} 7 0\ncpu0 50 2 25 500 5 0 1 20 0 0\nintr 1 2 3\n"


def _stat(tmp_path, steal):
    path = tmp_path / "stat"
    path.write_text(STAT.format(steal=steal))
    return path


def test_cpu_ticks_reads_steal_and_total_of_the_aggregate_line(tmp_path):
    # total = the first eight fields (guest time is already inside user): 100+5+50+1000+10+0+2+40
    assert host.cpu_ticks(_stat(tmp_path, 40)) == (40, 1207)


@pytest.mark.parametrize("text", ["", "cpu0 1 2 3 4 5 6 7 8\n", "cpu 1 2 3\n"])
def test_cpu_ticks_is_none_where_not_reported(tmp_path, text):
    path = tmp_path / "stat"
    path.write_text(text)
    assert host.cpu_ticks(path) is None
    assert host.cpu_ticks(tmp_path / "missing") is None


def test_steal_pct_is_the_share_of_the_ticks_in_between():
    assert host.steal_pct((40, 1207), (90, 1707)) == pytest.approx(10.0)
    assert host.steal_pct((40, 1207), (40, 1207)) is None  # no time passed
    assert host.steal_pct(None, (90, 1707)) is None


def test_latency_records_steal_time_on_linux(tmp_path, monkeypatch):
    from gpteval.measure import latency

    readings = iter([(10, 1000), (30, 1400)])
    monkeypatch.setattr(host, "cpu_ticks", lambda path=host.PROC_STAT: next(readings))
    monkeypatch.setattr(latency, "measure_latency", _fake_measure)
    out = latency.latency_at_batch(_FakeEngine(), 1, {"prompt_len": 4, "new_tokens": 3, "warmup": 0,
                                             "min_repeats": 1, "min_time_s": 0}, ceilings=None)
    assert out["metrics"]["cpu_steal_pct"] == pytest.approx(5.0)


class _FakeEngine:
    def describe(self):
        return {"dtype": "float32"}

    def decode_nbytes(self):
        return 1000


def _fake_measure(*args, **kwargs):
    class Result:
        def as_dict(self, include_samples=False):
            return {"ttft_ms": 1.0, "tpot_ms": 2.0, "decode_tok_s": 500.0, "prefill_tok_s": 4000.0,
                    "stats": {}, "samples": {}}
    return Result()


def _entry(variant, steal, status="ok"):
    return {"variant": variant, "status": status, "metrics": {"cpu_steal_pct": steal}}


def test_report_names_the_disturbed_variants():
    line = _steal_line([_entry("eager", 1.0), _entry("onnx", 12.4), _entry("hf", None),
                        _entry("bf16", 50.0, status="failed")])
    assert "1.0-12.4 %" in line
    assert "Disturbed" in line and "`onnx` 12 %" in line and "eager`" not in line


def test_report_is_quiet_below_the_threshold_and_without_readings():
    assert "Disturbed" not in _steal_line([_entry("eager", 0.5), _entry("onnx", 4.9)])
    assert _steal_line([_entry("eager", None)]) is None
