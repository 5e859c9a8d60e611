"""fused-decode:int8: the kernel built for int8 weights, a float32 scale per output column.

Its quantization is fixed (fused_layout.quantize_cols), so its logits have an exact
reference: the eager model with each projection and the lm_head replaced by the values
the kernel dequantizes (int8 times scale).  A scale dropped, applied twice or to the wrong
column, in decode, prefill or the tied embedding, moves the logits far beyond rounding."""

from __future__ import annotations

import pytest
import torch

from gpteval.engine import TorchEngine
from gpteval.model import GPT
from optimizers import (
    PassContext,
    PassError,
    fused_decode,
    parse_pipeline,
    pass_class,
    run_pipeline,
)
from optimizers.fused_layout import quantize_cols
from tests.test_fused_decode import (
    CFG,
    assert_decodes_like,
    build,
    greedy_logits,
    model,
    untied,
)

pytestmark = pytest.mark.skipif(fused_decode.compiler() is None,
                                reason="fused-decode needs a C compiler (gcc)")


def dequantize_(m: GPT) -> GPT:
    """m with every block projection and the lm_head (tied or not) at the values the int8
    kernel computes with, in place."""
    with torch.no_grad():
        for block in m.transformer.h:
            for lin in (block.attn.c_attn, block.attn.c_proj, block.mlp.c_fc, block.mlp.c_proj):
                q, scale = quantize_cols(lin.weight)  # Conv1D: (in, out)
                lin.weight.copy_(q.float() * scale)
        head = m.lm_head.weight  # (V, C); the token table too where tied
        q, scale = quantize_cols(head.t())
        head.copy_((q.float() * scale).t())
    return m


@pytest.mark.parametrize("make", [model, untied], ids=["tied", "untied"])
@pytest.mark.parametrize("threads", [1, 2, 3])
def test_int8_computes_with_its_dequantized_weights(tmp_path, threads, make):
    """Prefill (its GEMMs, the tied embedding gathered from the int8 head), decode steps
    into positions the prompt never reached, batch 1 then 3: the eager model on the
    dequantized weights, within float rounding."""
    eager = build("eager", dequantize_(make()), tmp_path)
    fused = build("fused-decode:int8", make(), tmp_path)
    assert_decodes_like(eager, fused, threads, ((1, 5, 40), (3, 17, 64)))


def test_int8_after_structured_pruning(tmp_path):
    """A pruned width is padded to the kernel's blocks; the padded columns quantize to
    zeros and do not disturb the real ones."""
    pruned = run_pipeline(parse_pipeline("prune-structured:0.3"), TorchEngine(model()),
                          PassContext(workdir=tmp_path))  # dense weights: editable
    dequantize_(pruned.model)
    fused = build("prune-structured:0.3+fused-decode:int8", model(), tmp_path)
    ids = torch.randint(0, CFG.vocab_size, (2, 9), generator=torch.Generator().manual_seed(3))
    want, got = greedy_logits(pruned, ids, 12, 24), greedy_logits(fused, ids, 12, 24)
    assert (got - want).abs().max().item() < 1e-4


def test_int8_logits_do_not_depend_on_threads_or_batch(tmp_path):
    """Work stealing and a batch's shared weight loads keep each sum's order, as in the
    float32 build: the same bits at 1, 2 and 3 threads, alone and in a batch."""
    fused = build("fused-decode:int8", model(), tmp_path)
    ids = torch.randint(0, CFG.vocab_size, (3, 9), generator=torch.Generator().manual_seed(3))
    before = torch.get_num_threads()
    try:
        runs = []
        for threads in (1, 2, 3):
            torch.set_num_threads(threads)
            runs.append(greedy_logits(fused, ids, 12, 24))
    finally:
        torch.set_num_threads(before)
    assert all(torch.equal(r, runs[0]) for r in runs[1:])
    alone = greedy_logits(fused, ids[1:2], 12, 24)
    assert torch.equal(alone[0], runs[0][1])


def test_int8_holds_a_quarter_of_the_bytes(tmp_path):
    """A byte a weight (and a scale a column): the copy and what a step reads shrink ~4x."""
    f32, f8 = build("fused-decode", model(), tmp_path), build("fused-decode:int8", model(), tmp_path)
    assert f8.decoder.arena.esize == 1 and f8.decoder.arena.head_panels.dtype == torch.int8
    assert f8.decoder.arena.nbytes < 0.3 * f32.decoder.arena.nbytes
    assert f8.nbytes() < 0.5 * f32.nbytes()
    # what a step reads, exactly: each weight of the five matrices (the tied head, (V, C),
    # and the block projections) a byte instead of four, its column's scale in float32,
    # and the biases and norms in float32 as before
    eager = build("eager", model(), tmp_path)
    mats = [p for n, p in eager.model.named_parameters()
            if n.endswith(".weight") and (".attn.c_" in n or ".mlp.c_" in n)]
    weights = sum(p.numel() for p in mats) + CFG.vocab_size * CFG.n_embd
    columns = sum(p.shape[1] for p in mats) + CFG.vocab_size
    assert f8.decode_nbytes() == eager.decode_nbytes() - 3 * weights + 4 * columns
    assert any("int8, a float32 scale per output column" in n for n in f8.notes)


def test_quantize_cols_rounds_each_column_to_its_own_step():
    w = torch.randn(64, 5, generator=torch.Generator().manual_seed(0))
    w[:, 3] *= 100  # one wide column must not coarsen the others
    w[:, 4] = 0  # padding: zeros, scale 1
    q, scale = quantize_cols(w)
    assert q.dtype == torch.int8 and q.abs().max() <= 127 and scale.shape == (5,)
    assert torch.equal(scale[4], torch.tensor(1.0)) and not q[:, 4].any()
    assert ((q.float() * scale - w).abs() <= scale / 2 + 1e-6).all()
    assert torch.equal(q.abs().amax(0)[:4], torch.full((4,), 127, dtype=torch.int8))


def test_a_storage_it_does_not_know_says_which_it_does():
    with pytest.raises(PassError, match="'fused-decode:int8'"):
        pass_class("fused-decode")("int4")
    assert pass_class("fused-decode")("int8").spec == "fused-decode:int8"
    assert pass_class("fused-decode")().spec == "fused-decode"
    assert pass_class("fused-decode")("int8").tolerance is None  # quality metrics judge it
