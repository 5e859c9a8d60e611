"""Every registered pass against the fp32 eager reference on a tiny random GPT.

Parametrized over `optimizers.REGISTRY`, so a new pass is tested by adding its registry
line.  A pass whose module fails to import fails here; a pass is skipped only with the
reason its own `available()` gives.
"""

import math

import pytest
import torch

import optimizers
from gpteval.engine import TorchEngine
from gpteval.model import GPT, GPTConfig
from optimizers import PassContext, PassError, parse_pipeline, pass_class

CFG = GPTConfig(vocab_size=256, n_positions=64, n_layer=2, n_head=2, n_embd=64, name="passes")
PROMPT, STEPS = 12, 8


def tiny_gpt(seed: int = 0) -> GPT:
    """The same random GPT for every call with the same seed.  Biases and LayerNorms get
    non-trivial values so a pass that drops or misplaces one shows in the logits."""
    torch.manual_seed(seed)
    model = GPT(CFG).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias") or ".ln_" in name or name.startswith("transformer.ln_f"):
                p.add_(torch.randn_like(p) * 0.1)
    return model


def train_tokens() -> torch.Tensor:
    """A learnable 'training split': a short repeating pattern with a little noise."""
    g = torch.Generator().manual_seed(3)
    ids = torch.arange(3000) * 7 % 23
    noise = torch.rand(3000, generator=g) < 0.05
    return torch.where(noise, torch.randint(0, CFG.vocab_size, (3000,), generator=g), ids)


def context(tmp_path) -> PassContext:
    ctx = PassContext(device="cpu", workdir=tmp_path, seed=0, train_ids=train_tokens)
    ctx.warmup_shape = (2, PROMPT + STEPS)  # compiling passes warm up on the shape we run
    return ctx


# parameters that only set an amount of work: the same code path, less of it
FAST_ARGS = {"finetune": "finetune:5"}


def pipeline_for(name: str) -> list:
    """The pass with its default parameter, preceded by the pass that makes the backend it
    needs (e.g. 'onnx' before 'ort-int8')."""
    cls = pass_class(name)
    step = FAST_ARGS.get(name, name)
    if "torch" in cls.requires:
        return parse_pipeline(step)
    maker = next(n for n in optimizers.REGISTRY if pass_class(n).produces in cls.requires)
    return parse_pipeline(f"{maker}+{step}")


def run_sequence(engine, ids: torch.Tensor) -> torch.Tensor:
    """Prefill PROMPT tokens, then decode the rest teacher-forced: the logits of positions
    PROMPT - 1 .. T - 1 (prefill returns the last prompt position's only)."""
    engine.reset(ids.shape[0], ids.shape[1])
    out = [engine.prefill(ids[:, :PROMPT])]
    for t in range(PROMPT, ids.shape[1]):
        # contiguous, like a sampled token: a strided view would make a compiled decode
        # recompile on the stride alone
        out.append(engine.decode(ids[:, t:t + 1].contiguous())[:, None])
    return torch.cat(out, dim=1)


def _slow_if_compiling(name: str):
    return pytest.param(name, marks=pytest.mark.slow) if name in ("compile", "tensorrt") else name


@pytest.mark.parametrize("name", [_slow_if_compiling(n) for n in optimizers.REGISTRY])
def test_pass_matches_eager(name, tmp_path):
    passes = pipeline_for(name)  # an import error fails here, never skips
    for p in passes:
        reason = p.available("cpu")
        if reason:
            pytest.skip(reason)
    ids = torch.randint(0, CFG.vocab_size, (2, PROMPT + STEPS),
                        generator=torch.Generator().manual_seed(1))
    ref = TorchEngine(tiny_gpt(), "cpu")
    want = ref.forward(ids)
    engine = TorchEngine(tiny_gpt(), "cpu")
    ctx = context(tmp_path)
    for p in passes:
        engine = p.apply(engine, ctx)
    got_full = engine.forward(ids)
    got_seq = run_sequence(engine, ids)

    assert got_full.shape == want.shape and got_seq.shape == want[:, PROMPT - 1:].shape
    assert got_full.dtype == got_seq.dtype == torch.float32
    assert torch.isfinite(got_full).all() and torch.isfinite(got_seq).all()
    if name == "compile":  # what freezing holds beside the weights is said, measured
        assert any("resident memory grew by" in n for n in engine.notes), engine.notes
        assert engine.forward_by_decode  # its quality numbers are the compiled step's
    tolerance = passes[-1].tolerance
    if tolerance is None:
        # no parity promised (pruning changes the function); its own KV cache must agree
        diff = (got_seq - got_full[:, PROMPT - 1:]).abs().max().item()
        assert diff <= 1e-4, f"{name}: prefill+decode differs from its own forward by {diff}"
        return
    atol = tolerance + 1e-5  # float noise on top of the declared tolerance
    for label, got in (("forward", got_full), ("prefill+decode", got_seq)):
        diff = (got - want[:, -got.shape[1]:]).abs().max().item()
        assert diff <= atol, (f"{name} {label}: max |logit - eager| = {diff:.2e} > declared "
                              f"tolerance {tolerance}")


@pytest.mark.parametrize("name", list(optimizers.REGISTRY))
def test_pass_declares_itself(name):
    cls = pass_class(name)
    assert cls.name == name
    assert cls.summary and "\n" not in cls.summary
    assert (cls.param is None) == (cls.default is None)
    if cls.default is not None:
        cls(cls.default)  # the default parses


@pytest.mark.parametrize("variant, says", [
    ("prune-magnitude:1.5", "between 0"),
    ("prune-magnitude:0", "between 0"),
    ("prune-wanda:half", "must be a number"),
    ("prune-structured:1", "between 0"),
    ("prune-2to4:0.5", "takes no parameter"),
    ("int4-weight-only:100", "choose one of 32, 64, 128, 256"),
    ("int4-weight-only:x", "whole number"),
    ("int8-dynamic:4", "takes no parameter"),
    ("fp16:1", "takes no parameter"),
    ("finetune:0", "between 1"),
    ("finetune:ten", "whole number"),
    ("compile:fast", "default, reduce-overhead, max-autotune"),
    ("tensorrt:int8", "fp16 or fp32"),
])
def test_bad_parameters_raise_pass_error(variant, says):
    with pytest.raises(PassError, match=says):
        parse_pipeline(variant)


def test_quantizing_twice_is_an_ordering_error(tmp_path):
    engine = parse_pipeline("int8-dynamic")[0].apply(TorchEngine(tiny_gpt()), context(tmp_path))
    second = parse_pipeline("int8-weight-only")[0]
    with pytest.raises(PassError, match="already quantized"):
        second.apply(engine, context(tmp_path))
    with pytest.raises(PassError, match="before quantization"):
        parse_pipeline("prune-magnitude")[0].apply(engine, context(tmp_path))


def test_compile_reduce_overhead_is_not_measured_on_cpu():
    reason = pass_class("compile")("reduce-overhead").available("cpu")
    assert reason and "CUDA graphs" in reason
    assert pass_class("compile")("max-autotune").available("cpu") is None


def test_gpu_only_passes_say_why_on_cpu():
    assert "NVIDIA GPU" in pass_class("fp8")().available("cpu")
    reason = pass_class("tensorrt")().available("cpu")
    assert "torch_tensorrt is not installed" in reason or "cuda only" in reason


def test_bf16_casts_weights_and_cache(tmp_path):
    engine = parse_pipeline("bf16")[0].apply(TorchEngine(tiny_gpt(), "cpu"), context(tmp_path))
    assert engine.describe()["dtype"] == "bfloat16"
    assert engine.model.transformer.h[0].mlp.c_fc.weight.dtype == torch.bfloat16
    assert math.isclose(engine.nbytes(), TorchEngine(tiny_gpt()).nbytes() / 2, rel_tol=0.01)
    engine.reset(1, 8)
    assert engine.model.transformer.h[0].attn.kv_cache.k.dtype == torch.bfloat16


def test_compile_refuses_torch_ao_layers_it_cannot_trace(tmp_path):
    engine = parse_pipeline("int8-dynamic")[0].apply(TorchEngine(tiny_gpt()), context(tmp_path))
    with pytest.raises(PassError, match="int8-weight-only\\+compile"):
        pass_class("compile")().apply(engine, context(tmp_path))


@pytest.mark.parametrize("variant,dense_fp32", [
    ("prune-magnitude:0.5", True),      # dense fp32 with the tied head: gets eager's layout
    ("prune-structured:0.3", True),
    ("int8-dynamic", False),            # quantized its own (untied) head and projections
    ("bf16", False),                    # other dtypes keep theirs
])
def test_dense_fp32_variants_get_the_inference_layout(variant, dense_fp32, tmp_path):
    """Every eager-mode fp32 variant decodes through the same layout as `eager` (lm_head
    (in, out), oneDNN-packed projections on CPU), so a speed ratio against eager measures
    the pass, not a slower layout; the logits stay within packing's rounding."""
    from gpteval.model import TransposedHead
    from gpteval.packed import packing_unavailable
    from optimizers import run_pipeline
    from optimizers.base import inference_layout

    engine = run_pipeline(parse_pipeline(variant), TorchEngine(tiny_gpt(), "cpu"),
                          PassContext(workdir=tmp_path, trained=False))
    ids = torch.randint(0, 256, (1, 24), generator=torch.Generator().manual_seed(1))
    before = engine.forward(ids)
    weights_mb = engine.nbytes()
    engine = inference_layout(engine)
    assert isinstance(engine.model.lm_head, TransposedHead) is dense_fp32
    can_pack = packing_unavailable(torch.zeros(2, 2)) is None
    packed = [m.packed for m, _ in engine.model._projections() if m.packed is not None]
    assert bool(packed) is (dense_fp32 and can_pack)
    # held instead of the dense weights: nothing on top of them
    assert all(p.dense_dropped for p in packed) and engine.model.packed_nbytes() == 0
    if dense_fp32:
        # the untied head adds its table; the packed copies take the dense weights' place
        head_mb = engine.model.lm_head.weight_t.numel() * 4
        assert engine.nbytes() == weights_mb + head_mb
        assert any("oneDNN-packed" in n for n in engine.notes) is can_pack
    torch.testing.assert_close(engine.forward(ids), before, rtol=0, atol=1e-5)


def test_max_autotune_on_cpu_keeps_to_the_cpp_gemm_templates():
    """The GEMM kernel is not left to one compile-time timing on the CPU (see
    cpu_gemm_options); elsewhere, and in other modes, inductor's own choices stand."""
    from optimizers.compile import cpu_gemm_options

    options = cpu_gemm_options("cpu", "max-autotune")
    assert options["max_autotune_gemm_backends"] == "CPP"
    assert options["max_autotune"] is True  # still the mode it names
    assert cpu_gemm_options("cuda", "max-autotune") is None
    assert cpu_gemm_options("cpu", "default") is None


@pytest.mark.slow
def test_compile_max_autotune_decodes_like_eager_and_falls_back_when_cpp_fails(
        tmp_path, monkeypatch):
    """compile:max-autotune on the CPU builds with the CPP templates; a build that fails
    with them alone is built again with every backend, and says so in the notes."""
    import optimizers.compile as compile_pass

    ids = torch.randint(0, CFG.vocab_size, (2, PROMPT + STEPS),
                        generator=torch.Generator().manual_seed(2))

    engine = pass_class("compile")("max-autotune").apply(TorchEngine(tiny_gpt(), "cpu"),
                                                         context(tmp_path))
    assert any("GEMM backends CPP" in n for n in engine.notes)
    want = TorchEngine(tiny_gpt(), "cpu").forward(ids)[:, PROMPT - 1:]
    torch.testing.assert_close(run_sequence(engine, ids), want, rtol=0, atol=1e-4)

    real_warm_up, calls = compile_pass.warm_up, []

    def fails_with_cpp_only(te, batch, max_len):
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("no CPP template for this GEMM")
        real_warm_up(te, batch, max_len)

    monkeypatch.setattr(compile_pass, "warm_up", fails_with_cpp_only)
    engine = pass_class("compile")("max-autotune").apply(TorchEngine(tiny_gpt(1), "cpu"),
                                                         context(tmp_path))
    assert len(calls) == 2
    assert any("CPP GEMM templates alone failed (RuntimeError)" in n for n in engine.notes)
    assert not any("GEMM backends CPP" in n for n in engine.notes)
    want = TorchEngine(tiny_gpt(1), "cpu").forward(ids)[:, PROMPT - 1:]
    torch.testing.assert_close(run_sequence(engine, ids), want, rtol=0, atol=1e-4)


@pytest.mark.slow
def test_compile_after_a_quantizing_pass_leaves_the_quantized_head_alone(tmp_path):
    """compile gives a plain float lm_head a packed copy for its prefill; a head torchao
    has quantized (a tensor subclass, no transpose) stays its quantized nn.Linear, and
    the compiled decode agrees with the quantized model's own forward."""
    passes = parse_pipeline("int8-weight-only+compile")
    reason = passes[0].available("cpu")
    if reason:
        pytest.skip(reason)
    ids = torch.randint(0, CFG.vocab_size, (2, PROMPT + STEPS),
                        generator=torch.Generator().manual_seed(3))
    engine, ctx = TorchEngine(tiny_gpt(), "cpu"), context(tmp_path)
    for p in passes:
        engine = p.apply(engine, ctx)
    assert type(engine.model.lm_head) is torch.nn.Linear
    got, want = run_sequence(engine, ids), engine.forward(ids)[:, PROMPT - 1:]
    torch.testing.assert_close(got, want, rtol=0, atol=1e-3)
