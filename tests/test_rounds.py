"""Interleaved latency rounds (latency.rounds): every variant of a model is measured in
turn, round after round, and each variant's samples are pooled, so host load that drifts
during a run reaches all variants alike."""

import json
import statistics
import subprocess
import sys

import pytest

from gpteval.measure import latency
from gpteval.measure.latency import LatencyResult
from gpteval.measure.stats import Stats
from tests.helpers import plugin_env, study_toml, tiny_checkpoint


def _run(args, env, cwd, timeout=300):
    return subprocess.run([sys.executable, "-m", "gpteval.cli", *args], env=env, cwd=cwd,
                          capture_output=True, text=True, timeout=timeout)


def test_pooled_with_adds_the_earlier_samples_to_every_statistic():
    now = LatencyResult(Stats([10.0, 12.0]), Stats([2.0, 4.0]), Stats([2.0, 2.0, 4.0, 4.0]), 1, 8, 3)
    earlier = {"ttft_ms": [30.0], "tpot_ms": [6.0, 8.0], "decode_step_ms": [6.0, 8.0]}
    pooled = now.pooled_with(earlier)
    assert pooled.ttft_ms.samples == [30.0, 10.0, 12.0]
    assert pooled.tpot_ms.median == pytest.approx(5.0)  # median of 2, 4, 6, 8
    assert pooled.decode_step_ms.n == 6
    assert pooled.decode_tok_s == pytest.approx(1000.0 / 5.0)
    assert now.tpot_ms.n == 2  # the round's own result is left as it was


class _Engine:
    def describe(self):
        return {"dtype": "float32"}

    def decode_nbytes(self):
        return 1000


def test_latency_at_batch_pools_an_earlier_round_and_averages_steal(monkeypatch):
    from gpteval.measure import host

    tpots = iter([[4.0, 4.0], [8.0, 8.0]])

    def fake_measure(engine, batch, prompt_len, new_tokens, **kw):
        t = next(tpots)
        return LatencyResult(Stats([20.0, 20.0]), Stats(t), Stats(t * 2), batch, prompt_len, new_tokens)

    ticks = iter([(0, 1000), (20, 2000), (20, 2000), (80, 3000)])  # 2 % then 6 % steal
    monkeypatch.setattr(host, "cpu_ticks", lambda path=host.PROC_STAT: next(ticks))
    monkeypatch.setattr(latency, "measure_latency", fake_measure)
    proto = {"prompt_len": 8, "new_tokens": 3, "warmup": 0, "min_repeats": 2, "min_time_s": 0}
    first = latency.latency_at_batch(_Engine(), 1, proto)
    both = latency.latency_at_batch(_Engine(), 1, proto, earlier=first)
    assert first["rounds"] == 1 and both["rounds"] == 2
    assert first["metrics"]["tpot_ms"] == pytest.approx(4.0)
    assert both["metrics"]["tpot_ms"] == pytest.approx(6.0)  # median of 4, 4, 8, 8
    assert both["samples"]["tpot_ms"] == [4.0, 4.0, 8.0, 8.0]
    assert both["stats"]["tpot_ms"]["n"] == 4
    assert both["metrics"]["cpu_steal_pct"] == pytest.approx(4.0)


def test_a_worker_is_not_parked_when_host_memory_runs_low(monkeypatch):
    from gpteval import worker
    from gpteval.measure import memory

    monkeypatch.setattr(memory, "host_memory_mb", lambda: (16000.0, 3000.0))
    assert "3000 of 16000 MiB host memory free" in worker.park_refusal("cpu")
    monkeypatch.setattr(memory, "host_memory_mb", lambda: (16000.0, 9000.0))
    assert worker.park_refusal("cpu") is None
    monkeypatch.setattr(memory, "host_memory_mb", lambda: (None, None))  # not Linux
    assert worker.park_refusal("cpu") is None


def test_a_cuda_worker_is_not_parked_when_gpu_memory_runs_low(monkeypatch):
    """The GPU branch, checked without a GPU: torch.cuda's answers stand in."""
    import torch

    from gpteval import worker
    from gpteval.measure import memory

    gib = 2 ** 30
    monkeypatch.setattr(memory, "host_memory_mb", lambda: (16000.0, 9000.0))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    asked = []

    def mem_get_info(device=None):
        asked.append(device)
        return free[0], 80 * gib

    monkeypatch.setattr(torch.cuda, "mem_get_info", mem_get_info)
    free = [10 * gib]
    assert "10240 of 81920 MiB GPU memory free" in worker.park_refusal("cuda:0")
    assert asked == [torch.device("cuda:0")]
    free = [40 * gib]
    assert worker.park_refusal("cuda") is None
    assert worker.park_refusal("cpu") is None and len(asked) == 2  # cpu never asks the GPU


def test_rounds_must_be_between_1_and_20():
    from pydantic import ValidationError

    from gpteval.config import LatencyConfig

    assert LatencyConfig().rounds == 1
    for bad in (0, 21):
        with pytest.raises(ValidationError):
            LatencyConfig(rounds=bad)


@pytest.mark.slow
def test_variants_are_measured_in_turn_and_their_samples_pooled(tmp_path):
    ck = tiny_checkpoint(tmp_path / "ck")
    cfg = tmp_path / "study.toml"
    cfg.write_text(study_toml(ck, ["eager", "int8-dynamic", "test-hang-later"], timeout_s=15,
                              latency_extra="rounds = 3\n"))
    out = tmp_path / "out"
    env = plugin_env(GPTEVAL_TEST_RESETS="3")  # test-hang-later hangs in its second round
    proc = _run(["run", str(cfg), "--out", str(out), "--quiet"], env, tmp_path)
    assert proc.returncode == 0, proc.stderr
    by = {r["variant"]: r for r in json.loads((out / "results.json").read_text())["results"]}
    eager, int8, hang = by["eager"], by["int8-dynamic"], by["test-hang-later"]
    for r in (eager, int8):
        assert r["latency_protocol"]["rounds"] == 3
        assert [rd["repeats"] for rd in r["latency_rounds"]] == [2, 2, 2]
        # min_repeats 2, min_time 0: two repeats per round, all pooled
        assert len(r["samples"]["tpot_ms"]) == 6 and r["stats"]["tpot_ms"]["n"] == 6
        assert r["metrics"]["tpot_ms"] == pytest.approx(statistics.median(r["samples"]["tpot_ms"]))
    start = {v: [rd["started_unix_s"] for rd in by[v]["latency_rounds"]] for v in ("eager", "int8-dynamic")}
    # round 1 is each variant's own job; rounds 2 and 3 come after every job of the model,
    # round 2 backwards through the variant list, round 3 forwards (serpentine)
    assert start["eager"][0] < start["int8-dynamic"][0] < start["int8-dynamic"][1] < start["eager"][1]
    assert start["eager"][1] < start["eager"][2] < start["int8-dynamic"][2]
    # the variant that hung in a later round keeps its first round, with the reason
    assert hang["status"] == "ok" and hang["latency_protocol"]["rounds"] == 1
    assert "timed out after 15 s" in hang["latency_rounds_note"]
    assert len(hang["samples"]["tpot_ms"]) == 2
    report = (out / "report.md").read_text()
    assert "in each of 3 interleaved rounds" in report
    assert "has 1 latency round(s): a later latency round timed out after 15 s" in report
    assert not (out / ".scratch").exists()  # parked workers' scratch removed at the end


def test_resume_accepts_a_run_from_before_rounds_existed(tmp_path):
    from gpteval.config import load_config
    from gpteval.harness import load_for_resume

    ck = tiny_checkpoint(tmp_path / "ck")
    path = tmp_path / "study.toml"
    path.write_text(study_toml(ck, ["eager"]))
    cfg, _ = load_config(path)
    old = cfg.model_dump()
    del old["latency"]["rounds"]
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "results.json").write_text(json.dumps({"run": {"config": old}, "results": []}))
    assert load_for_resume(tmp_path / "out", cfg)["run"]["config"] == old


def test_rounds_out_of_range_on_the_command_line_is_one_clear_error(capsys, tmp_path):
    from gpteval.cli import main

    ck = tiny_checkpoint(tmp_path / "ck")
    cfg = tmp_path / "s.toml"
    cfg.write_text(study_toml(ck, ["eager"]))
    args = ["run", str(cfg), "--out", str(tmp_path / "out"), "--quiet", "--rounds"]
    # above the config's limit: the config's own message
    assert main(args + ["21"]) == 2
    err = capsys.readouterr().err.strip()
    assert "latency.rounds" in err and "Traceback" not in err and len(err.splitlines()) == 1
    # below one: the flag refuses it
    with pytest.raises(SystemExit) as info:
        main(args + ["0"])
    err = capsys.readouterr().err.strip()
    assert info.value.code == 2 and "--rounds" in err and "must be at least 1" in err
    assert len(err.splitlines()) == 1


def test_each_round_is_held_to_the_bandwidth_measured_beside_it(monkeypatch):
    """roofline_paired_pct: round by round, decode bandwidth over the better of the probes
    right before and after that round; roofline_pct keeps the run's one ceiling."""
    from gpteval.measure import ceilings

    class CpuEngine(_Engine):
        device = "cpu"

    tpots = iter([[4.0, 4.0], [8.0, 8.0]])  # 1000 bytes a step: 2.5e-4, then 1.25e-4 GB/s

    def fake_measure(engine, batch, prompt_len, new_tokens, **kw):
        t = next(tpots)
        return LatencyResult(Stats([20.0, 20.0]), Stats(t), Stats(t * 2), batch, prompt_len, new_tokens)

    probes = iter([5e-4, 1e-3, 2.5e-4, 2e-4])  # round 1: better of 5e-4, 1e-3; round 2: 2.5e-4
    monkeypatch.setattr(latency, "measure_latency", fake_measure)
    monkeypatch.setattr(ceilings, "bandwidth_probe_gbs", lambda device: next(probes))
    proto = {"prompt_len": 8, "new_tokens": 3, "warmup": 0, "min_repeats": 2, "min_time_s": 0}
    run_ceiling = {"memory_bandwidth_gbs": 1e-3}
    first = latency.latency_at_batch(CpuEngine(), 1, proto, ceilings=run_ceiling)
    if first["metrics"]["bandwidth_probe_gbs"] is None:
        pytest.skip("the probe's memory cannot be left out of peak RSS here (no clear_refs)")
    assert first["metrics"]["roofline_paired_pct"] == pytest.approx(25.0)
    both = latency.latency_at_batch(CpuEngine(), 1, proto, ceilings=run_ceiling, earlier=first)
    assert both["samples"]["bandwidth_probe_gbs"] == [1e-3, 2.5e-4]
    assert both["samples"]["roofline_round_pct"] == pytest.approx([25.0, 50.0])
    assert both["metrics"]["roofline_paired_pct"] == pytest.approx(37.5)
    assert both["metrics"]["bandwidth_probe_gbs"] == pytest.approx(6.25e-4)
    # the pooled median tpot (6 ms) against the run's ceiling
    assert both["metrics"]["roofline_pct"] == pytest.approx(100 * 1000 / 6e-3 / 1e9 / 1e-3)


def test_no_probe_on_a_gpu_or_outside_a_run(monkeypatch):
    from gpteval.measure import ceilings

    class CudaEngine(_Engine):
        device = "cuda:0"

    def no_probe(device):
        raise AssertionError("probed")

    monkeypatch.setattr(latency, "measure_latency", lambda engine, batch, p, n, **kw: LatencyResult(
        Stats([20.0]), Stats([4.0]), Stats([4.0, 4.0]), batch, p, n))
    monkeypatch.setattr(ceilings, "bandwidth_probe_gbs", no_probe)
    proto = {"prompt_len": 8, "new_tokens": 3, "warmup": 0, "min_repeats": 1, "min_time_s": 0}
    for engine, ceiling in ((CudaEngine(), {"memory_bandwidth_gbs": 1.0}), (_Engine(), None)):
        m = latency.latency_at_batch(engine, 1, proto, ceilings=ceiling)["metrics"]
        assert m["roofline_paired_pct"] is None and m["bandwidth_probe_gbs"] is None
