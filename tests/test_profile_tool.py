"""tools/profile_decode.py, the profile evidence behind roofline claims, on the tiny preset."""

import subprocess
import sys
from pathlib import Path

import pytest

from gpteval.model import PRESETS

TOOL = Path(__file__).resolve().parents[1] / "tools" / "profile_decode.py"


def _profile(variant: str, *extra: str) -> str:
    proc = subprocess.run([sys.executable, str(TOOL), "--model", "tiny", "--variant", variant,
                           "--prompt", "8", "--steps", "4", "--top", "30", *extra],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


def test_torch_variant_ranks_its_kernels():
    out = _profile("eager")
    assert "tiny eager cpu batch 1: tpot" in out
    assert "cpu time in kernels per step" in out


def test_onnx_variant_ranks_ort_operators_of_the_decode_steps():
    for module in ("onnx", "onnxruntime", "onnxscript"):
        pytest.importorskip(module, reason=f"{module} is not installed (pip install 'gpteval[onnx]')")
    out = _profile("onnx")
    assert "ORT per decode step: model_run median" in out
    rows = {line.split()[-1]: float(line.split()[1]) for line in out.splitlines()
            if line.strip() and line.split()[0].replace(".", "").isdigit()}
    # one attention node per layer each step: the static-cache graph, counted over decode only
    layers = PRESETS["tiny"]["n_layer"]
    assert rows.get("GroupQueryAttention") == pytest.approx(layers)
    # four projections per layer as Gemm (bias fused), the lm_head a MatMul; a cache Concat
    # would be two per layer (the one Concat left builds a Reshape shape)
    assert rows.get("Gemm") == pytest.approx(4 * layers) and "MatMul" in rows
    assert rows.get("Concat", 0) < 2 * layers


def test_prefill_profile_counts_each_prefill_once():
    for module in ("onnx", "onnxruntime", "onnxscript"):
        pytest.importorskip(module, reason=f"{module} is not installed (pip install 'gpteval[onnx]')")
    out = _profile("onnx", "--prefill")
    assert "ORT per prefill: model_run median" in out
    rows = {line.split()[-1]: float(line.split()[1]) for line in out.splitlines()
            if line.strip() and line.split()[0].replace(".", "").isdigit()}
    layers = PRESETS["tiny"]["n_layer"]
    # per prefill, not per decode step: one attention and four projections per layer
    assert rows.get("GroupQueryAttention") == pytest.approx(layers)
    assert rows.get("Gemm") == pytest.approx(4 * layers)
