"""oneDNN-packed projection weights (gpteval/packed.py): same map as the dense weights,
used only where it is safe (inference, unchanged weights, no graph capture)."""

import copy

import pytest
import torch

from gpteval.model import GPT, preset_config
from gpteval.packed import PackedLinear, packing_unavailable

CANNOT_PACK = packing_unavailable(torch.zeros(2, 2))  # None where this torch build can
pytestmark = pytest.mark.skipif(CANNOT_PACK is not None, reason=f"{CANNOT_PACK}")


@pytest.fixture
def calls(monkeypatch):
    """Counts calls that ran on a packed copy."""
    seen = {"n": 0}
    real = PackedLinear.__call__

    def counting(self, x2, bias):
        seen["n"] += 1
        return real(self, x2, bias)

    monkeypatch.setattr(PackedLinear, "__call__", counting)
    return seen


def tiny() -> GPT:
    torch.manual_seed(0)
    model = GPT(preset_config("tiny")).eval()
    model.transpose_lm_head_()
    return model


@pytest.mark.parametrize("batch,prompt", [(1, 1), (8, 1), (1, 128)])  # decode b1/b8, prefill
def test_packed_projections_match_dense(batch, prompt, calls):
    model = tiny()
    ids = torch.randint(0, 256, (batch, prompt), generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        dense = model(ids)
        count, reason = model.pack_weights_()
        assert (count, reason) == (4 * 4 + 1, None)  # 4 per block, and the lm_head
        packed = model(ids)
    assert calls["n"] == count  # every projection ran on its packed copy
    torch.testing.assert_close(packed, dense, rtol=0, atol=1e-5)


def test_packed_copy_is_not_used_once_its_weight_changes(calls):
    """A pass that edits a weight in place (pruning) must not run a stale packed copy."""
    model = tiny()
    model.pack_weights_()
    fc = model.transformer.h[0].mlp.c_fc
    with torch.no_grad():
        fc.weight.mul_(0.5)
    x = torch.randn(1, 5, 256)
    with torch.inference_mode():
        y = fc(x)
    assert calls["n"] == 0
    torch.testing.assert_close(y, torch.addmm(fc.bias, x[0], fc.weight)[None], rtol=0, atol=1e-5)


def test_training_through_a_packed_model_keeps_every_gradient():
    """The packed op has no backward: with autograd recording, every projection takes the
    dense path, so the loss reaches all weights (the head's (in, out) copy is frozen, so
    the check there is that the gradient flows on to the blocks)."""
    model = tiny()
    model.pack_weights_()
    model.train()
    ids = torch.randint(0, 256, (2, 16), generator=torch.Generator().manual_seed(2))
    _, loss = model(ids, ids)
    loss.backward()
    grads = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
    assert all(g is not None and g.abs().sum() > 0 for g in grads.values()), \
        [n for n, g in grads.items() if g is None or g.abs().sum() == 0]


def test_a_deep_copy_drops_the_packing_and_bytes_are_counted():
    model = tiny()
    model.pack_weights_()
    per_block = sum(m.weight.numel() for m in model.transformer.h[0].modules()
                    if hasattr(m, "packed") and m.packed is not None) * 4
    head = model.lm_head.weight_t.numel() * 4
    assert model.packed_nbytes() == 4 * per_block + head
    clone = copy.deepcopy(model)  # opaque oneDNN tensors have no storage to copy
    assert clone.packed_nbytes() == 0
    ids = torch.randint(0, 256, (1, 8), generator=torch.Generator().manual_seed(3))
    with torch.inference_mode():
        torch.testing.assert_close(clone(ids), model(ids), rtol=0, atol=1e-5)


def test_only_plain_float32_cpu_weights_are_packed():
    assert packing_unavailable(torch.zeros(2, 2, dtype=torch.bfloat16)) == \
        "weights are torch.bfloat16, packing is for float32"
    assert "not plain dense" in packing_unavailable(torch.zeros(4, 4).to_sparse())
    model = tiny().to(torch.bfloat16)
    assert model.pack_weights_() == (0, "weights are torch.bfloat16, packing is for float32")


def test_compiled_decode_of_a_packed_model_matches_eager(calls):
    """torch.compile traces the plain matmul (packing is invisible under capture); the
    eager prefill beside it runs on the packed copies."""
    model = tiny()
    model.pack_weights_()
    model.setup_cache(1, 16)
    ids = torch.randint(0, 256, (1, 8), generator=torch.Generator().manual_seed(4))
    with torch.inference_mode():
        logits = model.prefill(ids)[:, -1]
        assert calls["n"] == 17
        token = logits.argmax(-1, keepdim=True)
        pos = torch.tensor([8])
        eager = model.decode(token, pos)
        compiled = torch.compile(model.decode, fullgraph=True, dynamic=False)(token, pos)
    torch.testing.assert_close(compiled, eager, rtol=0, atol=1e-5)


def test_dropping_the_dense_weights_frees_them_and_keeps_the_logits(calls):
    """An inference-only model holds its projections packed *instead of* dense: the
    weights' storage is gone, the bytes are counted once, the logits are unchanged."""
    model = tiny()
    ids = torch.randint(0, 256, (2, 12), generator=torch.Generator().manual_seed(5))
    dense = [w.detach().clone() for _, w in model._projections()]
    with torch.inference_mode():
        before = model(ids)
        count, _ = model.pack_weights_(drop_dense=True)
        after = model(ids)
    assert calls["n"] == count == len(dense)
    torch.testing.assert_close(after, before, rtol=0, atol=1e-5)
    for _, w in model._projections():
        assert w.untyped_storage().nbytes() == 4  # one NaN stands in for the matrix
    assert model.packed_nbytes() == 0  # held instead of the dense weights, not beside them
    # packing again (a second inference_layout) keeps the copies: the stand-ins are no weights
    with torch.inference_mode():
        assert model.pack_weights_(drop_dense=True) == (count, None)
        torch.testing.assert_close(model(ids), before, rtol=0, atol=1e-5)
    assert "dropped" in packing_unavailable(model.transformer.h[0].mlp.c_fc.weight)
    # the exact weights come back from the packed copies
    assert model.unpack_weights_() == count
    for (_, w), original in zip(model._projections(), dense):
        assert torch.equal(w, original)
    assert model.packed_nbytes() == sum(w.numel() * 4 for w in dense)


def test_a_model_without_dense_weights_refuses_what_needs_them():
    model = tiny()
    model.pack_weights_(drop_dense=True)
    ids = torch.randint(0, 256, (1, 8), generator=torch.Generator().manual_seed(6))
    with pytest.raises(RuntimeError, match="unpack_weights_"):
        model(ids, ids)  # autograd recording: the packed op has no backward
    with pytest.raises(TypeError, match="unpack_weights_"):
        copy.deepcopy(model)
    fc = model.transformer.h[0].mlp.c_fc
    with pytest.raises(RuntimeError), torch.no_grad():
        fc.weight.mul_(2)  # the stand-in takes no in-place edit
    # a weight replaced after packing is used as given (the stale-copy rule)
    fc.weight = torch.nn.Parameter(torch.zeros(fc.weight.shape))
    with torch.inference_mode():
        assert torch.equal(fc(torch.ones(1, 1, 256)), fc.bias.expand(1, 1, -1))


def test_a_linear_head_stays_tied_and_runs_packed_without_being_dropped(calls):
    """Compile's CPU layout: the tied (V, C) lm_head gets a packed copy for prefill, and
    dropping dense weights must never drop it (the embedding gathers from it)."""
    torch.manual_seed(0)
    model = GPT(preset_config("tiny")).eval()
    keys = set(model.state_dict())
    ids = torch.randint(0, 256, (1, 9), generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        dense = model(ids)
        model.packable_lm_head_()
        assert model.lm_head.weight is model.transformer.wte.weight
        count, _ = model.pack_weights_(drop_dense=True)
        assert count == 4 * 4 + 1 and model.lm_head.packed is not None
        assert not model.lm_head.packed.dense_dropped
        calls["n"] = 0
        model.lm_head(torch.randn(1, 1, 256))
        assert calls["n"] == 1  # the head ran on its packed copy
        packed = model(ids)
    assert torch.isfinite(model.transformer.wte.weight).all()
    assert set(model.state_dict()) == keys  # nn.Linear's key names, checkpoints still load
    torch.testing.assert_close(packed, dense, rtol=0, atol=1e-5)
