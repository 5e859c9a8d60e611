"""The CI gate on the committed baseline: the real gates (configs/ci-gates.toml) pass the
baseline against itself and fail, naming the pass and the metric, when a pass is broken
on purpose — int8-dynamic that keeps fp32 weights (no speedup), or a pass whose logits
are noisy (fidelity and perplexity drop)."""

import copy
import json
from pathlib import Path

import pytest

from gpteval.compare import compare
from gpteval.gates import load_gates

ROOT = Path(__file__).resolve().parents[1]
BASELINE = ROOT / "reports" / "ci-baseline" / "results.json"


@pytest.fixture(scope="module")
def baseline():
    if not BASELINE.exists():
        pytest.fail("reports/ci-baseline/results.json is missing: refresh it (see README)")
    return json.loads(BASELINE.read_text())


@pytest.fixture(scope="module")
def gates():
    return load_gates(ROOT / "configs" / "ci-gates.toml")


def _result(data, model, variant):
    return next(r for r in data["results"] if r["model"] == model and r["variant"] == variant)


def test_baseline_passes_its_own_gates(baseline, gates):
    assert all(r["status"] == "ok" for r in baseline["results"]), "baseline has failed variants"
    res = compare(baseline, copy.deepcopy(baseline), gates)
    assert res.exit_code == 0, res.summary_lines()


def test_int8_that_keeps_fp32_weights_fails_the_speed_ratio(baseline, gates):
    broken = copy.deepcopy(baseline)
    eager, int8 = _result(broken, "gpt2", "eager"), _result(broken, "gpt2", "int8-dynamic")
    # what a no-op quantizer measures: eager's own speed and samples
    for key in ("decode_tok_s", "tpot_ms", "ttft_ms"):
        int8["metrics"][key] = eager["metrics"][key]
    int8["samples"] = copy.deepcopy(eager["samples"])
    res = compare(baseline, broken, gates)
    assert res.exit_code == 1
    text = "\n".join(res.summary_lines())
    assert "int8-dynamic" in text and "decode_tok_s" in text


def test_noisy_logits_fail_the_quality_gates(baseline, gates):
    broken = copy.deepcopy(baseline)
    m = _result(broken, "bundled", "onnx+ort-int8")["metrics"]
    # what adding noise to the logits does: fidelity and perplexity get worse
    m["kl_mean"] += 0.05
    m["top1_agree"] -= 0.05
    m["ppl"] *= 1.05
    res = compare(baseline, broken, gates)
    assert res.exit_code == 1
    lines = [ln for ln in res.summary_lines() if ln.startswith("REGRESSION")]
    assert all("onnx+ort-int8" in ln for ln in lines)
    named = " ".join(lines)
    for metric in ("kl_mean", "top1_agree", "ppl"):
        assert metric in named
