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
                          capture_output=True, text=True, timeout=300, check=False)
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


GAP_TOOL = TOOL.parent / "roofline_gap.py"


def test_roofline_gap_reads_the_decode_tensors_and_pairs_each_round():
    proc = subprocess.run([sys.executable, str(GAP_TOOL), "--model", "tiny", "--variant", "eager",
                           "--rounds", "2", "--prompt", "8", "--steps", "4"],
                          capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.splitlines()
    # the large tensors it streams hold nearly all the bytes a decode step reads
    # (decode_nbytes), eager's dropped dense weights stood in for by real tensors of their size
    head = lines[0].split()  # "... a decode step reads X MB; N tensors, the M of ... hold Y MB"
    reads, held = float(head[head.index("reads") + 1]), float(head[head.index("hold") + 1])
    assert 0.95 * reads <= held <= reads
    rounds = [line.split() for line in lines[2:-1]]
    assert len(rounds) == 2 and all(len(r) == 8 for r in rounds)
    for r in rounds:
        probe, decode, dec_probe = float(r[1]), float(r[4]), float(r[5])
        assert probe > 0 and decode > 0
        assert dec_probe == pytest.approx(decode / probe, abs=0.011)
    assert lines[-1].startswith("median over rounds: dec/probe")


def test_decode_tensors_leave_gathered_tables_out_and_replace_stand_ins():
    sys.path.insert(0, str(TOOL.parent))
    try:
        from roofline_gap import decode_tensors
    finally:
        sys.path.pop(0)
    from gpteval.engine import TorchEngine
    from gpteval.model import GPT, GPTConfig
    from gpteval.packed import is_stand_in

    model = GPT(GPTConfig(vocab_size=64, n_positions=32, n_layer=2, n_head=2, n_embd=32))
    engine = TorchEngine(model, "cpu")
    engine.reset(1, 16)
    tensors = decode_tensors(engine, model)
    nbytes = sum(t.numel() * t.element_size() for t in tensors)
    assert nbytes == engine.decode_nbytes()  # the tied wte is read whole by the lm_head
    assert all(t.data_ptr() != model.transformer.wpe.weight.data_ptr() for t in tensors)
    model.pack_weights_(drop_dense=True)
    if model.transformer.h[0].attn.c_attn.packed is not None:
        assert not any(is_stand_in(t) for t in decode_tensors(engine, model))
        assert sum(t.numel() for t in decode_tensors(engine, model)) == \
            sum(t.numel() for t in tensors)


def test_decode_tensors_of_fused_decode_are_its_weight_copy_and_cache(tmp_path):
    from optimizers import fused_decode

    if fused_decode.compiler() is None:
        pytest.skip("fused-decode needs a C compiler (gcc)")
    sys.path.insert(0, str(TOOL.parent))
    try:
        from roofline_gap import decode_tensors
    finally:
        sys.path.pop(0)
    from gpteval.engine import TorchEngine
    from gpteval.model import GPT, GPTConfig
    from optimizers import PassContext, parse_pipeline, run_pipeline

    model = GPT(GPTConfig(vocab_size=64, n_positions=32, n_layer=2, n_head=2, n_embd=32))
    engine = run_pipeline(parse_pipeline("fused-decode"), TorchEngine(model, "cpu"),
                          PassContext(workdir=tmp_path), layout=True)
    engine.reset(1, 16)
    tensors = decode_tensors(engine, model)
    assert tensors[0].data_ptr() == engine.decoder.arena.buffer.data_ptr()
    assert len(tensors) == 1 + 2 * 2  # the copy, then k and v of each layer's cache


SIDE_TOOL = TOOL.parent / "side_by_side.py"


def test_side_by_side_measures_each_variant_every_round_against_the_first():
    proc = subprocess.run([sys.executable, str(SIDE_TOOL), "--model", "tiny", "--variants",
                           "eager,bf16", "--rounds", "2", "--prompt", "8", "--new", "4"],
                          capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.splitlines()
    rounds = [line for line in lines if line.startswith("round ")]
    assert len(rounds) == 2 and all(line.count("tok/s") == 2 for line in rounds)
    assert all(line.count("TTFT") == 2 for line in rounds)
    # the ratios are each round's tok/s over the first variant's (its TTFT over each
    # one's): the first is 1 exactly
    assert lines[-2].startswith("median over rounds, against eager: eager 1.000, bf16 ")
    assert lines[-1].startswith("TTFT, median over rounds of eager's over each: eager 1.000, "
                                "bf16 ")


def test_side_by_side_names_a_pass_it_cannot_build_in_one_line():
    proc = subprocess.run([sys.executable, str(SIDE_TOOL), "--model", "tiny", "--variants",
                           "eager,fp32", "--rounds", "1"],
                          capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "fp32: unknown pass 'fp32'" in proc.stderr


AB_TOOL = TOOL.parent / "kernel_ab.py"


def _kernel_ab(base_dir: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(AB_TOOL), "--base-dir", str(base_dir),
                           "--model", "tiny", "--rounds", "2", "--repeats", "1", "--prompt",
                           "20", *extra], capture_output=True, text=True, timeout=300,
                          check=False)


def test_kernel_ab_swaps_the_prefill_kernel_between_two_builds(tmp_path):
    """A copy of the kernel's own sources prefills the same bits; a copy whose prefill
    attention scales the scores by half does not, so the tool really runs A's library."""
    import shutil

    from optimizers.fused_build import HEADERS, PREFILL_SOURCE, SOURCES

    same, other = tmp_path / "same", tmp_path / "other"
    for d in (same, other):
        d.mkdir()
        for path in (*SOURCES, *HEADERS):
            shutil.copy(path, d / path.name)
    prefill = (other / PREFILL_SOURCE.name).read_text()
    assert prefill.count("1.f / sqrtf((float)hs)") == 1
    (other / PREFILL_SOURCE.name).write_text(
        prefill.replace("1.f / sqrtf((float)hs)", "0.5f / sqrtf((float)hs)"))

    proc = _kernel_ab(same)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "logits: the same bits" in proc.stdout
    assert "A/B median over 2 rounds" in proc.stdout
    proc = _kernel_ab(other)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "logits: max abs diff" in proc.stdout


def test_kernel_ab_times_the_blocks_modules_against_their_one_call():
    """--modules: A is the model's own prefill (the blocks' modules), B the blocks in one
    call; the two differ by the layer norms' rounding only."""
    proc = subprocess.run([sys.executable, str(AB_TOOL), "--modules", "--model", "tiny",
                           "--rounds", "2", "--repeats", "1", "--prompt", "20"],
                          capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("logits: "))
    assert line == "logits: the same bits" or float(line.rsplit(" ", 1)[1]) < 1e-4
    assert "A/B median over 2 rounds" in proc.stdout


def test_kernel_ab_refuses_what_it_cannot_swap_in_one_line(tmp_path):
    proc = _kernel_ab(tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "no fused_decode.c there" in proc.stderr
    proc = _kernel_ab(tmp_path, "--variant", "eager")
    assert proc.returncode == 2 and "this tool swaps fused-decode's kernel" in proc.stderr
    proc = _kernel_ab(tmp_path, "--rounds", "0")
    assert proc.returncode == 2 and "positive count" in proc.stderr
