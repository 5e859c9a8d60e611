"""latency.batch = [1, 2]: the first batch size is the primary one (plain metric names, main
table); every further one is measured the same way under `_b<B>` names, reported in a
"Batch sizes" section and the CSV, and compared by the gate."""

import copy
import json
import math
import subprocess
import sys

import numpy as np
import pytest

from gpteval import worker
from gpteval.compare import compare
from gpteval.gates import Gates, RatioGate
from gpteval.report import render_csv, render_markdown
from gpteval.report import results as R
from gpteval.report.benchmark import benchmark_entries
from tests.helpers import study_toml
from tests.test_report_fixtures import make_results

FURTHER = ("ttft_ms_b2", "tpot_ms_b2", "decode_tok_s_b2", "prefill_tok_s_b2", "bandwidth_gbs_b2",
           "roofline_pct_b2", "flops_pct_b2")


def with_batch_2(results: dict, slow: dict | None = None, seed: int = 0) -> dict:
    """The fixture as if measured with latency.batch = [1, 2]: batch 2 takes 1.2× the time of a
    batch-1 step (so 1.67× the tokens/s), times `slow[variant]`; samples are redrawn."""
    out, rng = copy.deepcopy(results), np.random.default_rng(seed)
    for e in out["results"]:
        if e["status"] != "ok":
            continue
        factor = 1.2 * (slow or {}).get(e["variant"], 1.0)
        for name in R.BATCH_SERIES:
            values = np.asarray(e["samples"][name]) * factor * rng.lognormal(0, 0.01, len(e["samples"][name]))
            e["samples"][R.at_batch(name, 2)] = values.tolist()
            e["stats"][R.at_batch(name, 2)] = {**e["stats"][name], "median": float(np.median(values)),
                                               "ci95_lo": float(np.median(values)) * 0.98,
                                               "ci95_hi": float(np.median(values)) * 1.02}
        m = e["metrics"]
        tpot, ttft = e["stats"]["tpot_ms_b2"]["median"], e["stats"]["ttft_ms_b2"]["median"]
        m.update(ttft_ms_b2=ttft, tpot_ms_b2=tpot, decode_tok_s_b2=2000.0 / tpot,
                 prefill_tok_s_b2=2 * 32 * 1000.0 / ttft, bandwidth_gbs_b2=m["weights_mb"] / tpot,
                 roofline_pct_b2=100.0 * m["weights_mb"] / tpot / 12.0, flops_pct_b2=None)
        e["latency_protocol"] = {**e["latency_protocol"], "batches": [1, 2]}
    out["run"]["config"]["latency"]["batch"] = [1, 2]
    return out


# ---- reports -------------------------------------------------------------------------------
def test_report_has_a_batch_sizes_section_and_keeps_batch_1_in_the_main_table():
    results = with_batch_2(make_results(0))
    text = render_markdown(results)
    assert render_markdown(json.loads(json.dumps(results))) == text  # byte for byte from JSON
    assert "## Batch sizes" in text and "Speed columns are at batch 1" in text
    assert "batch sizes 1, 2 (primary 1)" in text and "**`<metric>_b<B>`**" in text
    section = text[text.index("## Batch sizes"):text.index("## Skipped and failed")]
    header = next(line for line in section.splitlines() if line.startswith("| model"))
    for title in ("decode tok/s (batch 1)", "tpot_ms (batch 2)", "TTFT ms (batch 2)", "roofline % (batch 2)"):
        assert title in header
    int8 = next(e for e in results["results"] if e["variant"] == "int8-dynamic")
    row = next(line for line in section.splitlines() if "| int8-dynamic |" in line)
    assert f"{int8['metrics']['decode_tok_s']:,.1f}" in row
    assert f"{int8['metrics']['decode_tok_s_b2']:,.1f}" in row
    assert "tensorrt" not in section  # only ok results have speeds
    # the main table is unchanged: the same primary numbers as a batch-1-only run
    main = text[:text.index("## Batch sizes")]
    plain = render_markdown(make_results(0))
    assert main.split("## Model `bundled`")[1].split("\n\n")[1] == \
        plain.split("## Model `bundled`")[1].split("\n\n")[1]


def test_single_batch_report_has_no_batch_section():
    text = render_markdown(make_results(0))
    assert "## Batch sizes" not in text and "_b<B>" not in text and "Latency protocol: batch 1," in text


def test_csv_and_benchmark_carry_the_suffixed_metrics():
    results = with_batch_2(make_results(0))
    header, *rows = render_csv(results).splitlines()
    columns = header.split(",")
    for name in FURTHER:
        assert name in columns
    assert columns.index("decode_tok_s_b2") > columns.index("flops_pct")  # after the plain ones
    int8 = next(r.split(",") for r in rows if r.split(",")[1] == "int8-dynamic")
    assert int8[columns.index("batch")] == "1"
    bigger, smaller = benchmark_entries(results)
    assert "bundled/int8-dynamic/cpu decode_tok_s_b2" in {b["name"] for b in bigger}
    b2 = next(s for s in smaller if s["name"] == "bundled/int8-dynamic/cpu tpot_ms_b2")
    assert b2["range"].startswith("± ") and "repeats=12" in b2["extra"]


def test_old_results_with_an_int_batch_still_render():
    results = make_results(0)
    for e in results["results"]:
        if e.get("latency_protocol"):
            e["latency_protocol"]["batch"] = [4]  # as a list, without "batches"
    assert "Latency protocol: batch 4," in render_markdown(results)
    assert R.batches({"batch": 8}) == [8] and R.batches({"batch": 1, "batches": [1, 8]}) == [1, 8]


def test_plots_are_written_for_several_batch_sizes(tmp_path):
    from gpteval.report import write_reports

    results = with_batch_2(make_results(0, variants=["eager", "int8-dynamic"]))
    paths = write_reports(results, tmp_path)
    assert sum(p.suffix == ".png" for p in paths) == 3
    assert (tmp_path / "report.md").read_text() == render_markdown(results)


# ---- worker --------------------------------------------------------------------------------
def test_a_failing_further_batch_size_is_recorded_and_the_rest_stands(monkeypatch):
    from gpteval.measure import latency

    def fake(engine, batch, protocol, seed=0, n_params=0, ceilings=None, shape_warmup=False,
             head_params=0):
        if batch == 4:
            raise RuntimeError("no kernel for batch 4")
        assert shape_warmup
        return {"metrics": {"tpot_ms": 2.0 * batch}, "stats": {"tpot_ms": {"median": 2.0 * batch}},
                "samples": {"tpot_ms": [2.0 * batch]}}

    monkeypatch.setattr(latency, "latency_at_batch", fake)
    result = {"metrics": {"tpot_ms": 1.0}, "stats": {}, "samples": {}}
    measured = {1: "primary"}
    job = {"config": {"latency": {}}}
    worker._further_batches(None, [4, 8], job, result, measured)
    assert result["metrics"] == {"tpot_ms": 1.0, "tpot_ms_b8": 16.0}
    assert sorted(measured) == [1, 8]  # later latency rounds revisit the sizes that worked
    assert result["samples"] == {"tpot_ms_b8": [16.0]} and result["stats"]["tpot_ms_b8"]["median"] == 16.0
    assert result["batch_errors"] == {"4": "RuntimeError at test_batch_sizes.py:" +
                                      result["batch_errors"]["4"].split(":")[1] + ": no kernel for batch 4"}


# ---- compare -------------------------------------------------------------------------------
def test_compare_flags_a_slowdown_at_batch_2_only():
    baseline = with_batch_2(make_results(0), seed=0)
    current = with_batch_2(make_results(1), slow={"int8-dynamic": 1.3}, seed=1)
    result = compare(baseline, current)
    assert result.exit_code == 1
    assert {(r.variant, r.metric) for r in result.regressed} == {("int8-dynamic", "decode_step_ms_b2"),
                                                                ("int8-dynamic", "ttft_ms_b2")}
    line = next(m for m in result.summary_lines() if "decode_step_ms_b2" in m)
    assert line.startswith("REGRESSION bundled/int8-dynamic/cpu: decode_step_ms_b2 ")
    assert compare(baseline, with_batch_2(make_results(1), seed=1)).exit_code == 0


def test_compare_gates_decode_tok_s_at_batch_2_as_higher_is_better():
    baseline = with_batch_2(make_results(0))
    current = with_batch_2(make_results(1), slow={"int8-dynamic": 1.3}, seed=1)
    gates = Gates(absolute=False, speedup_tolerance_pct=10.0)
    result = compare(baseline, current, gates)
    assert [(r.variant, r.metric) for r in result.regressed] == [
        ("int8-dynamic", "decode_tok_s_b2 ratio over eager")]
    assert R.higher_is_better("decode_tok_s_b2") and not R.higher_is_better("tpot_ms_b2")
    gate = Gates(absolute=False, ratio=[RatioGate(variant="int8-dynamic", metric="decode_tok_s_b2", min=3.0)])
    assert compare(baseline, current, gate).exit_code == 1  # ~3.1× / 1.3 < 3
    assert compare(baseline, baseline, gate).exit_code == 0


def test_batch_size_missing_from_the_current_run_is_a_note_not_a_failure():
    baseline = with_batch_2(make_results(0))
    result = compare(baseline, make_results(1))
    assert result.exit_code == 0
    assert any("Batch size 2 was measured in the baseline only" in n for n in result.notes)
    failed = make_results(1)
    broken = with_batch_2(failed)
    int8 = next(e for e in broken["results"] if e["variant"] == "int8-dynamic")
    for block in ("metrics", "stats", "samples"):
        int8[block] = {k: v for k, v in int8[block].items() if not k.endswith("_b2")}
    int8["batch_errors"] = {"2": "out of memory on CUDA: tried to allocate"}
    result = compare(baseline, broken)
    missing = [r for r in result.regressed if r.verdict == "missing"]
    assert missing and all(r.variant == "int8-dynamic" and r.metric.endswith("_b2") for r in missing)
    assert "out of memory" in missing[0].reason
    assert "`bundled/int8-dynamic/cpu` at batch 2 **failed**: out of memory" in render_markdown(broken)


# ---- a real run: worker, harness, report ---------------------------------------------------
@pytest.mark.slow
def test_run_measures_every_batch_size(tmp_path):
    study = tmp_path / "study.toml"
    text = study_toml("tiny", ["eager"], name="batches").replace("batch = 1\n", "batch = [1, 2]\n")
    study.write_text(text)
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-m", "gpteval.cli", "run", str(study), "--out", str(out),
                           "--quiet"], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                          check=False)
    assert proc.returncode == 0, proc.stderr
    results = json.loads((out / "results.json").read_text())
    (eager,) = results["results"]
    assert eager["status"] == "ok", eager.get("reason")
    m = eager["metrics"]
    for name in ("ttft_ms", "tpot_ms", "decode_tok_s", "prefill_tok_s", "bandwidth_gbs",
                 "roofline_pct", "flops_pct") + FURTHER:
        assert isinstance(m[name], float) and math.isfinite(m[name]) and m[name] > 0, name
    # decode_tok_s counts the tokens of the whole batch; a step reads the weights once for the
    # whole batch (engine.decode_nbytes() also counts the engine's KV cache, which grows with it)
    assert m["decode_tok_s_b2"] == pytest.approx(2 * 1000.0 / m["tpot_ms_b2"])
    assert m["prefill_tok_s_b2"] == pytest.approx(2 * 16 * 1000.0 / m["ttft_ms_b2"])
    step_bytes, step_bytes_b2 = m["bandwidth_gbs"] * m["tpot_ms"], m["bandwidth_gbs_b2"] * m["tpot_ms_b2"]
    assert step_bytes <= step_bytes_b2 < 1.1 * step_bytes
    assert m["flops_pct_b2"] / m["flops_pct"] == pytest.approx(2 * m["ttft_ms"] / m["ttft_ms_b2"])
    for series in ("ttft_ms", "tpot_ms", "decode_step_ms"):
        assert len(eager["samples"][f"{series}_b2"]) >= 2 and eager["stats"][f"{series}_b2"]["median"] > 0
    assert eager["latency_protocol"]["batch"] == 1 and eager["latency_protocol"]["batches"] == [1, 2]
    assert "batch_errors" not in eager and m["top1_agree"] == 1.0
    report = (out / "report.md").read_text()
    assert "## Batch sizes" in report and "decode tok/s (batch 2)" in report
    assert "decode_tok_s_b2" in (out / "results.csv").read_text().splitlines()[0]
    again = subprocess.run([sys.executable, "-m", "gpteval.cli", "report", str(out / "results.json"),
                            "--out", str(tmp_path / "again")], cwd=tmp_path, capture_output=True,
                           text=True, timeout=300, check=False)
    assert again.returncode == 0, again.stderr
    for name in ("report.md", "results.csv", "benchmark.json", "benchmark-smaller.json"):
        assert (tmp_path / "again" / name).read_bytes() == (out / name).read_bytes(), name
