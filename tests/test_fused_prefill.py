"""fused-decode's prefill: the blocks in one call of fused_blocks.c (ArenaPrefill) against
the blocks' own modules (the path it replaced, still the model's), and where it hands a
prompt to them."""

from __future__ import annotations

import pytest
import torch

from optimizers import fused_build, fused_prefill

from .test_fused_decode import CFG, build, model

pytestmark = pytest.mark.skipif(fused_build.compiler() is None,
                                reason="fused-decode needs a C compiler (gcc)")


def caches(engine, T: int) -> list[torch.Tensor]:
    return [t[:, :, :T].clone() for b in engine.model.transformer.h
            for t in (b.attn.kv_cache.k, b.attn.kv_cache.v)]


@pytest.mark.parametrize("variant", ["fused-decode", "fused-decode:int8"])
def test_the_blocks_in_one_call_match_their_modules(tmp_path, variant):
    """The engine's prefill runs no block module (their work is in fused_blocks.c); its
    logits and every layer's keys and values match the modules' prefill (the model's own)
    to float rounding (the layer norms are the decode step's, not torch's), for batches
    of 1-3 sequences (the last layer keeps each one's last row), the same bits at 1 and 3
    threads."""
    fused = build(variant, model(), tmp_path)
    assert isinstance(fused.prefill_fn, fused_prefill.ArenaPrefill)
    blocks_run = []
    for block in fused.model.transformer.h:
        block.register_forward_pre_hook(lambda m, args: blocks_run.append(m))
    before = torch.get_num_threads()
    try:
        for B, T in ((1, 1), (3, 17), (2, 40)):
            ids = torch.randint(0, CFG.vocab_size, (B, T),
                                generator=torch.Generator().manual_seed(T))
            by_threads = []
            for threads in (1, 3):
                torch.set_num_threads(threads)
                fused.reset(B, 64)
                by_threads.append((fused.prefill(ids), caches(fused, T)))
            assert blocks_run == []
            got, got_cache = by_threads[0]
            assert torch.equal(got, by_threads[1][0])
            assert all(torch.equal(a, b) for a, b in zip(got_cache, by_threads[1][1]))
            fused.reset(B, 64)
            with torch.inference_mode():
                want = fused.model.prefill(ids)  # the blocks' modules
            assert len(blocks_run) == CFG.n_layer
            blocks_run.clear()
            assert got.shape == want.shape == (B, 1, CFG.vocab_size)
            assert (got - want).abs().max().item() < 1e-5, (B, T)
            for a, b in zip(got_cache, caches(fused, T)):
                assert (a - b).abs().max().item() < 1e-5, (B, T)
    finally:
        torch.set_num_threads(before)


def test_prompts_it_does_not_take_go_to_the_modules(tmp_path):
    """Past the kernel attention's length limit (SDPA attends those), and for a batch other
    than the cache's, the blocks' modules run (the model's own prefill, with its own
    checks); the long prompt's logits still match eager's."""
    fused = build("fused-decode", model(), tmp_path)
    blocks_run = []
    for block in fused.model.transformer.h:
        block.register_forward_pre_hook(lambda m, args: blocks_run.append(m))
        block.attn.prefill_attention.MAX_POSITIONS = 16
    eager = build("eager", model(), tmp_path)
    for B, T, cache_batch in ((1, 20, 1), (1, 16, 1), (1, 8, 2)):
        ids = torch.randint(0, CFG.vocab_size, (B, T), generator=torch.Generator().manual_seed(2))
        eager.reset(cache_batch, 32)
        fused.reset(cache_batch, 32)
        blocks_run.clear()
        assert (fused.prefill(ids) - eager.prefill(ids)).abs().max().item() < 1e-4
        assert len(blocks_run) == (0 if (T, cache_batch) == (16, 1) else CFG.n_layer), (B, T)
