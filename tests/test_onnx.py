"""ONNX export and ONNX Runtime engines against the eager reference.

One tiny GPT is exported once per module (the dynamo exporter takes seconds); every test
reads that export.  Tests that need onnxruntime skip with the reason when it is missing.
"""

import ast
from pathlib import Path

import numpy as np
import pytest
import torch

from gpteval.engine import TorchEngine
from gpteval.model import GPT, GPTConfig
from optimizers import PassContext, PassError, parse_pipeline
from optimizers.onnx import DecodeStep, OnnxExport, OrtInt4, OrtInt8, export_decode_step

VOCAB, N_LAYER = 200, 2  # 200: unlike 3C = 192 and 4C = 256, only wte and lm_head have it


def _require_ort():
    for module in ("onnx", "onnxruntime", "onnxscript"):
        pytest.importorskip(module,
                            reason=f"{module} is not installed (pip install 'gpteval[onnx]')")


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = GPT(GPTConfig(vocab_size=VOCAB, n_positions=64, n_layer=N_LAYER, n_head=2, n_embd=64,
                      name="t")).eval()
    # larger-than-init weights, non-trivial biases and LayerNorms: a dropped bias, a wrong
    # mask or a swapped key/value shows as a logit difference far above fp32 noise
    with torch.no_grad():
        for name, p in m.named_parameters():
            if name.endswith("bias") or ".ln_" in name:
                p.add_(torch.randn_like(p) * 0.1)
            elif p.dim() == 2:
                p.normal_(std=0.08)
    return m


@pytest.fixture(scope="module")
def engines(model, tmp_path_factory):
    """fp32, int8 and int4 engines built by the passes, in one workdir."""
    _require_ort()
    ctx = PassContext(workdir=tmp_path_factory.mktemp("onnx"))
    fp32 = OnnxExport().apply(TorchEngine(model), ctx)
    return {"fp32": fp32, "int8": OrtInt8().apply(fp32, ctx), "int4": OrtInt4().apply(fp32, ctx),
            "workdir": ctx.workdir}


def _ids(batch, length, seed):
    return torch.randint(0, VOCAB, (batch, length), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("batch", [1, 2])
def test_onnx_prefill_and_decode_match_torch(model, engines, batch):
    ref, ort = TorchEngine(model), engines["fp32"]
    prompt = _ids(batch, 7, seed=batch)
    ref.reset(batch, 16)
    ort.reset(batch, 16)
    diffs = [(ort.prefill(prompt) - ref.prefill(prompt)).abs().max().item()]
    token = prompt[:, -1:]
    for _ in range(6):
        r, o = ref.decode(token), ort.decode(token)
        assert o.shape == (batch, VOCAB) and o.dtype == torch.float32
        diffs.append((o - r).abs().max().item())
        token = r.argmax(-1, keepdim=True)
    assert max(diffs) <= 1e-4, f"max abs logit diff per step: {diffs}"
    # teacher-forced forward: a fresh pass with an empty past
    ids = _ids(batch, 30, seed=10 + batch)
    assert (ort.forward(ids) - ref.forward(ids)).abs().max().item() <= 1e-4


@pytest.fixture(scope="module")
def concat_graph(model, tmp_path_factory):
    """The Concat-cache graph the CUDA export uses (ORT's CUDA GQA takes fp16/bf16 only)."""
    _require_ort()
    path = tmp_path_factory.mktemp("concat") / "model.onnx"
    export_decode_step(model, path, static_cache=False)
    return path


def test_concat_graph_chunk_with_past_matches_full_pass(model, concat_graph):
    """T > 1 new tokens after a past: the causal mask must offset by past_len."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(concat_graph), providers=["CPUExecutionProvider"])
    ids = _ids(2, 12, seed=5)
    names = [f"past_{kv}_{i}" for i in range(N_LAYER) for kv in ("key", "value")]
    empty = {n: torch.zeros(2, 2, 0, 32).numpy() for n in names}
    first = session.run(None, {"input_ids": ids[:, :9].numpy(), **empty,
                               "logits_positions": np.arange(9)})
    assert first[1].shape == (2, 2, 9, 32)  # present_key_0 (B, nh, past_len + T, hs)
    second = session.run(None, {"input_ids": ids[:, 9:].numpy(), **dict(zip(names, first[1:])),
                                "logits_positions": np.arange(3)})
    with torch.no_grad():
        full = model(ids)
    assert (torch.from_numpy(second[0]) - full[:, 9:]).abs().max().item() <= 1e-4
    assert second[1].shape == (2, 2, 12, 32)


def test_static_cache_graph_chunk_with_past_matches_full_pass(model, engines):
    """The CPU graph: one GroupQueryAttention per layer, no cache Concat; T > 1 tokens after
    a past land at total - T in the fixed-length buffer and see the past."""
    import onnx
    import onnxruntime as ort

    graph = onnx.load(str(engines["fp32"].model_path), load_external_data=False).graph
    ops = [n.op_type for n in graph.node]
    assert ops.count("GroupQueryAttention") == N_LAYER
    # the only Concats build Reshape shapes; none grows a cache
    shape_inputs = {n.input[1] for n in graph.node if n.op_type == "Reshape"}
    assert all(n.output[0] in shape_inputs for n in graph.node if n.op_type == "Concat")
    session = ort.InferenceSession(str(engines["fp32"].model_path),
                                   providers=["CPUExecutionProvider"])
    ids = _ids(1, 12, seed=5)  # ORT's GQA takes a T > 1 chunk after a past at batch 1 only
    names = [f"past_{kv}_{i}" for i in range(N_LAYER) for kv in ("key", "value")]
    buffers = {n: torch.zeros(1, 2, 16, 32).numpy() for n in names}
    first = session.run(None, {"input_ids": ids[:, :9].numpy(), **buffers,
                               "logits_positions": np.array([8]),
                               "total_sequence_length": np.array(9, np.int32)})
    assert first[0].shape == (1, 1, VOCAB)  # the last position's logits only
    assert first[1].shape == (1, 2, 16, 32)  # present_key_0 keeps the buffer's length
    assert not first[1][:, :, 9:].any()  # nothing written past the 9 tokens
    second = session.run(None, {"input_ids": ids[:, 9:].numpy(), **dict(zip(names, first[1:])),
                                "logits_positions": np.arange(3),
                                "total_sequence_length": np.array(12, np.int32)})
    with torch.no_grad():
        full = model(ids)
    assert (torch.from_numpy(second[0]) - full[:, 9:]).abs().max().item() <= 1e-4


def test_static_cache_reference_op_matches_the_model(model):
    """The PyTorch semantics the exporter traces (gpteval::cached_attention) are GPT's."""
    step = DecodeStep(model, static_cache=True)
    ids = _ids(2, 10, seed=6)
    past = tuple(torch.zeros(2, 2, 16, 32) for _ in range(2 * N_LAYER))
    with torch.no_grad():
        first = step(ids[:, :7], past, torch.arange(7), torch.tensor(7, dtype=torch.int32))
        second = step(ids[:, 7:], first[1:], torch.arange(3),
                      torch.tensor(10, dtype=torch.int32))
        full = model(ids)
    assert (first[0] - full[:, :7]).abs().max().item() <= 1e-5
    assert (second[0] - full[:, 7:]).abs().max().item() <= 1e-5


def test_decode_binding_is_kept_and_its_logits_are_copies(model, engines):
    ref, ort = TorchEngine(model), engines["fp32"]
    for batch in (2, 1):  # a new batch size after reset() binds new buffers
        prompt = _ids(batch, 5, seed=20 + batch)
        ref.reset(batch, 12)
        ort.reset(batch, 12)
        ref.prefill(prompt)
        ort.prefill(prompt)
        first = ort.decode(prompt[:, -1:])
        binding = ort._step
        kept = first.clone()
        second = ort.decode(first.argmax(-1, keepdim=True))
        assert ort._step is binding  # bound once, reused by the next step
        assert torch.equal(first, kept)  # the next step did not write into returned logits
        assert (first - ref.decode(prompt[:, -1:])).abs().max().item() <= 1e-4
        assert (second - ref.decode(first.argmax(-1, keepdim=True))).abs().max().item() <= 1e-4


def test_ort_fuses_every_projection_and_its_bias_into_one_gemm(engines, tmp_path):
    """Activations are 2-D between attentions so ORT turns MatMul + bias Add into Gemm (with
    3-D activations every bias stayed a separate Add: 3.5 % of a gpt2 fp32 decode step)."""
    import onnx
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(str(engines["fp32"].model_path), so, providers=["CPUExecutionProvider"])
    ops = [n.op_type for n in onnx.load(so.optimized_model_filepath, load_external_data=False).graph.node]
    assert ops.count("Gemm") == 4 * N_LAYER  # qkv, attention out, fc, mlp out per layer
    assert ops.count("MatMul") == 1  # the bias-free lm_head
    assert ops.count("Add") <= 2 * N_LAYER + 2  # residuals and position arithmetic only


def test_static_cache_is_updated_in_place(engines):
    ort = engines["fp32"]
    ort.reset(1, 12)
    buffers = list(ort._past)
    ort.prefill(_ids(1, 5, seed=8))
    ort.decode(torch.tensor([[3]]))
    assert all(a is b for a, b in zip(ort._past, buffers))  # no per-step allocation
    key0 = buffers[0].numpy()
    assert key0[:, :, :6].any() and not key0[:, :, 6:].any()


def test_lm_head_is_untied_in_the_graph(engines):
    import onnx

    graph = onnx.load(str(engines["fp32"].model_path), load_external_data=False).graph
    shapes = sorted(tuple(t.dims) for t in graph.initializer if VOCAB in t.dims)
    assert shapes == [(64, VOCAB), (VOCAB, 64)]  # lm_head (C, V) apart from wte (V, C)


def test_ort_int8_is_close_and_greedy_tokens_agree(model, engines):
    ids = _ids(2, 40, seed=7)
    ref = TorchEngine(model).forward(ids)
    out = engines["int8"].forward(ids)
    # measured: max abs diff 0.065 (logit std 0.62), top-1 agreement 0.96
    assert (out - ref).abs().max().item() <= 0.1
    assert (out.argmax(-1) == ref.argmax(-1)).float().mean().item() >= 0.9
    # the eager greedy continuation, teacher-forced through int8: measured 12 of 12 agree
    seq = _greedy(TorchEngine(model), ids[:, :8], 12)
    picked = engines["int8"].forward(seq)[:, 7:-1].argmax(-1)
    assert (picked == seq[:, 8:]).float().mean().item() >= 0.8


def _greedy(engine, prompt, n):
    """prompt (B, P) followed by n greedy tokens, through prefill + decode."""
    engine.reset(prompt.shape[0], prompt.shape[1] + n)
    logits = engine.prefill(prompt)[:, -1]
    tokens = [prompt]
    for _ in range(n):
        tokens.append(logits.argmax(-1, keepdim=True))
        logits = engine.decode(tokens[-1])
    return torch.cat(tokens, 1)


def test_ort_int4_runs_finite_and_close(model, engines):
    ids = _ids(2, 40, seed=7)
    ref = TorchEngine(model).forward(ids)
    out = engines["int4"].forward(ids)
    assert torch.isfinite(out).all()
    # measured: max abs diff 0.46 (logit std 0.62), top-1 agreement 0.74 with block 32
    # on these deliberately large random weights
    assert (out - ref).abs().max().item() <= 0.75
    assert (out.argmax(-1) == ref.argmax(-1)).float().mean().item() >= 0.6


def test_artifacts_sizes_and_description(engines):
    fp32, int8, int4 = engines["fp32"], engines["int8"], engines["int4"]
    for engine in (fp32, int8, int4):
        files = engine.artifact_files()
        assert [f.rsplit(".", 1)[-1] for f in files] == ["onnx", "data"]
        assert all(str(engines["workdir"]) in f for f in files)
    assert len({fp32.model_path, int8.model_path, int4.model_path}) == 3
    # fp32 weights: the model's params plus the untied (C, V) lm_head, 4 bytes each, plus
    # the exporter's scalar constants (64 bytes here)
    with torch.device("meta"):
        n_params = GPT(GPTConfig(vocab_size=VOCAB, n_positions=64, n_layer=N_LAYER, n_head=2,
                                 n_embd=64)).num_params()
    fp32.reset(1, 0)  # an empty static cache: nbytes() is the initializers alone
    assert 0 <= fp32.nbytes() - 4 * (n_params + 64 * VOCAB) < 256
    assert int8.nbytes() < 0.35 * fp32.nbytes()
    assert int4.nbytes() < 0.5 * fp32.nbytes()
    assert [e.describe()["dtype"] for e in (fp32, int8, int4)] == [
        "float32", "int8 weights", "int4 weights"]
    d = fp32.describe()
    assert d["backend"] == "onnx" and d["device"] == "cpu"
    assert any("opset" in n and "dynamo=True" in n for n in d["notes"])
    assert any("block 32" in n for n in int4.describe()["notes"])


def test_static_cache_buffers_count_in_nbytes(engines, concat_graph):
    from optimizers.ort_engine import OrtEngine, initializer_nbytes

    ort = engines["fp32"]
    ort.reset(1, 0)
    weights, decode_weights = ort.nbytes(), ort.decode_nbytes()
    ort.reset(2, 10)
    # keys and values, every layer, batch 2, 10 positions, 64 channels, fp32
    cache = 2 * N_LAYER * 2 * 10 * 64 * 4
    assert ort.nbytes() - weights == cache
    assert ort.decode_nbytes() - decode_weights == cache
    # a Concat graph's cache grows per step and is not a held buffer (as the hf peer's)
    concat = OrtEngine(concat_graph, "cpu", VOCAB, 64)
    concat.reset(2, 10)
    concat.prefill(_ids(2, 5, seed=3))
    assert not concat.static_cache and concat.nbytes() == initializer_nbytes(concat_graph)


def test_decode_past_cache_length_raises(engines):
    ort = engines["fp32"]
    ort.reset(1, 4)
    ort.prefill(_ids(1, 4, seed=9))
    with pytest.raises(ValueError, match="cache length"):
        ort.decode(torch.tensor([[1]]))


def test_ort_passes_need_onnx_first():
    for variant in ("ort-int8", "ort-int4:64", "eager+ort-int8"):
        with pytest.raises(PassError, match="'onnx' before it"):
            parse_pipeline(variant)
    assert [p.name for p in parse_pipeline("onnx+ort-int4:64")] == ["onnx", "ort-int4"]


def test_int4_block_size_is_validated():
    with pytest.raises(PassError, match="16, 32, 64, 128"):
        OrtInt4("48")
    assert OrtInt4("128").block_size == 128 and OrtInt4().block_size == 32


def test_missing_onnxruntime_gives_the_install_hint(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "onnxruntime" else real(name, *a))
    reason = "onnxruntime is not installed (pip install 'gpteval[onnx]')"
    assert OnnxExport().available("cpu") == reason
    assert OrtInt8().available("cpu") == reason
    assert OrtInt4().available("cpu") == reason


def test_int8_is_cpu_only():
    assert "cpu" in OrtInt8().available("cuda")


def test_onnx_packages_are_imported_inside_functions_only():
    import optimizers.onnx
    import optimizers.ort_engine

    heavy = {"onnx", "onnxruntime", "onnxscript"}
    for module in (optimizers.onnx, optimizers.ort_engine):
        tree = ast.parse(Path(module.__file__).read_text())
        top = [a.name for n in tree.body if isinstance(n, ast.Import) for a in n.names]
        top += [n.module for n in tree.body if isinstance(n, ast.ImportFrom) and n.module]
        assert not {name.split(".")[0] for name in top} & heavy, module.__name__
