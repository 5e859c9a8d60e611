"""Quantization passes: the Conv1D -> Linear conversion they rest on, which library runs
where, what the weights become, and the honest skip reasons."""

import pytest
import torch

from gpteval.engine import TorchEngine
from optimizers import PassContext, PassError, parse_pipeline, pass_class
from optimizers.quantize import Conv1DAsLinear, block_projections, is_plain, linearize

from .test_passes import CFG, PROMPT, run_sequence, tiny_gpt


def quantized(variant: str) -> TorchEngine:
    engine = TorchEngine(tiny_gpt())
    for p in parse_pipeline(variant):
        engine = p.apply(engine, PassContext())
    return engine


def test_linearize_keeps_the_function_and_the_kv_cache():
    ids = torch.randint(0, CFG.vocab_size, (2, 20), generator=torch.Generator().manual_seed(2))
    want = TorchEngine(tiny_gpt()).forward(ids)
    model = tiny_gpt()
    assert linearize(model) == 4 * CFG.n_layer
    assert linearize(model) == 0  # idempotent
    c_attn = model.transformer.h[0].attn.c_attn
    assert isinstance(c_attn, Conv1DAsLinear)
    assert c_attn.linear.weight.shape == (3 * CFG.n_embd, CFG.n_embd)  # (out, in)
    assert c_attn.weight.shape == (CFG.n_embd, 3 * CFG.n_embd)  # what model.py reads
    # lm_head untied: its own copy of the embedding, same values
    assert model.lm_head.weight is not model.transformer.wte.weight
    assert torch.equal(model.lm_head.weight, model.transformer.wte.weight)
    engine = TorchEngine(model)
    assert (engine.forward(ids) - want).abs().max().item() <= 1e-5
    assert (run_sequence(engine, ids) - want[:, PROMPT - 1:]).abs().max().item() <= 1e-5


def test_int8_dynamic_on_cpu_is_torch_ao_with_lm_head():
    eager_bytes = TorchEngine(tiny_gpt()).nbytes()
    engine = quantized("int8-dynamic")
    model = engine.model
    from torch.ao.nn.quantized.dynamic import Linear as DynamicQuantizedLinear

    assert all(isinstance(getattr(parent, attr).linear, DynamicQuantizedLinear)
               for _, parent, attr in block_projections(model))
    assert isinstance(model.lm_head, DynamicQuantizedLinear)
    assert is_plain(model.transformer.wte.weight)  # the lookup stays fp32
    assert "torch.ao quantize_dynamic" in engine.notes[-1]
    # int8 blocks and lm_head, fp32 embeddings: well under fp32's bytes
    assert engine.nbytes() < 0.5 * eager_bytes


def test_int8_weight_only_stores_int8_tensors():
    engine = quantized("int8-weight-only")
    weights = [getattr(parent, attr).linear.weight
               for _, parent, attr in block_projections(engine.model)]
    weights.append(engine.model.lm_head.weight)
    assert all(not is_plain(w) for w in weights)
    assert {type(w).__name__ for w in weights} == {"Int8Tensor"}
    assert engine.nbytes() < 0.5 * TorchEngine(tiny_gpt()).nbytes()


def test_int8_dynamic_on_cpu_refuses_a_half_model():
    with pytest.raises(PassError, match="fp32 model"):
        quantized("bf16+int8-dynamic")


def test_int4_on_cpu_reports_what_torchao_says():
    p = pass_class("int4-weight-only")()
    reason = p.available("cpu")
    if reason is None:  # a torchao with CPU int4 kernels: then it must work
        engine = quantized("int4-weight-only:32")
        assert "int4-weight-only" in engine.notes[-1]
        return
    assert "Int4WeightOnlyConfig raised" in reason and "torchao" in reason


def test_fp8_needs_cuda():
    reason = pass_class("fp8")().available("cpu")
    assert reason and "compute capability >= 8.9" in reason


def test_fp8_leaves_shapes_cublas_cannot_take_in_bf16():
    """GPT-2's lm_head (50,257 outputs) failed fp8 on an H200 with CUBLAS_STATUS_NOT_SUPPORTED:
    _scaled_mm needs every dimension divisible by 16."""
    from torch import nn

    from optimizers.quantize import fp8_shape_ok

    assert fp8_shape_ok(nn.Linear(1600, 4800, device="meta"))
    assert not fp8_shape_ok(nn.Linear(1600, 50257, device="meta"))
    assert not fp8_shape_ok(nn.Linear(1601, 64, device="meta"))
    assert not fp8_shape_ok(nn.LayerNorm(16, device="meta"))
