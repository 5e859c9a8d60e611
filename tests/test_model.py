"""The reference GPT against Hugging Face GPT-2, and its KV cache against the full pass."""

import pytest
import torch

from gpteval.model import GPT, PRESETS, GPTConfig, preset_config
from gpteval.weights import load_model


def test_presets_have_gpt2_shapes():
    shapes = {n: (c.n_layer, c.n_head, c.n_embd) for n in PRESETS for c in [preset_config(n)]}
    assert shapes["gpt2"] == (12, 12, 768)
    assert shapes["gpt2-medium"] == (24, 16, 1024)
    assert shapes["gpt2-large"] == (36, 20, 1280)
    assert shapes["gpt2-xl"] == (48, 25, 1600)
    assert preset_config("gpt2").vocab_size == 50257
    assert preset_config("gpt2").n_positions == 1024


def test_gpt2_preset_parameter_count():
    # GPT-2 small has 124,439,808 parameters with tied embeddings
    with torch.device("meta"):
        model = GPT(preset_config("gpt2"))
    assert model.num_params() == 124_439_808


def test_config_rejects_indivisible_heads():
    with pytest.raises(ValueError, match="divisible"):
        GPTConfig(n_embd=30, n_head=4)


@pytest.mark.parametrize("batch", [1, 3])
def test_kv_cache_matches_full_forward(tiny_model, batch):
    torch.manual_seed(2)
    ids = torch.randint(0, tiny_model.config.vocab_size, (batch, 20))
    with torch.no_grad():
        full = tiny_model(ids)  # (B, 20, V)
        tiny_model.setup_cache(batch, 32)
        pre = tiny_model.prefill(ids[:, :8])
        steps = [tiny_model.decode(ids[:, t:t + 1], torch.tensor([t])) for t in range(8, 20)]
    assert pre.shape == (batch, 1, tiny_model.config.vocab_size)  # the next token's only
    assert (pre - full[:, 7:8]).abs().max().item() <= 1e-5
    dec = torch.stack(steps, dim=1)
    assert (dec - full[:, 8:]).abs().max().item() <= 1e-5


def test_hf_logits_parity(hf_dir):
    transformers = pytest.importorskip("transformers")
    hf = transformers.GPT2LMHeadModel.from_pretrained(hf_dir).eval()
    loaded = load_model(str(hf_dir))
    assert loaded.source == "hf" and loaded.trained
    assert loaded.model.config.n_embd == 48 and loaded.model.config.n_layer == 3
    ids = torch.randint(0, 300, (2, 40), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        ours = loaded.model(ids)
        theirs = hf(ids).logits
    assert (ours - theirs).abs().max().item() <= 1e-4


def test_greedy_generation_matches_hf(hf_dir):
    transformers = pytest.importorskip("transformers")
    hf = transformers.GPT2LMHeadModel.from_pretrained(hf_dir).eval()
    model = load_model(str(hf_dir)).model
    prompt = torch.tensor([[5, 17, 42, 99, 7]])
    ours = model.generate(prompt, max_new_tokens=20)
    theirs = hf.generate(prompt, max_new_tokens=20, do_sample=False, pad_token_id=0,
                         attention_mask=torch.ones_like(prompt))
    assert ours.tolist() == theirs.tolist()


def test_sampling_is_seeded(tiny_model):
    prompt = torch.tensor([[1, 2, 3]])
    a = tiny_model.generate(prompt, 15, temperature=1.0, top_k=10, seed=7)
    b = tiny_model.generate(prompt, 15, temperature=1.0, top_k=10, seed=7)
    c = tiny_model.generate(prompt, 15, temperature=1.0, top_k=10, seed=8)
    assert a.tolist() == b.tolist()
    assert a.tolist() != c.tolist()


def test_top_k_one_is_greedy(tiny_model):
    prompt = torch.tensor([[4, 5]])
    greedy = tiny_model.generate(prompt, 10)
    top1 = tiny_model.generate(prompt, 10, temperature=0.8, top_k=1, seed=3)
    assert greedy.tolist() == top1.tolist()


def test_split_k_decode_matmul_matches_addmm():
    """Few-row CPU products run as a split-K bmm (torch's one-row mm uses one thread);
    the result is the same affine map up to rounding order."""
    from gpteval.model import _split_k_parts, rows_matmul

    torch.manual_seed(0)
    x, w, b = torch.randn(3, 768), torch.randn(768, 2304), torch.randn(2304)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        assert _split_k_parts(3, 768, x.device) == 2  # the split path is really taken
        assert _split_k_parts(64, 768, x.device) == 1  # prefill-sized: plain addmm
        # outputs are ~30 in size here: 2e-4 is fp32 rounding of a 768-term sum
        torch.testing.assert_close(rows_matmul(x, w, b), torch.addmm(b, x, w), rtol=1e-5, atol=2e-4)
        torch.testing.assert_close(rows_matmul(x, w, None), x @ w, rtol=1e-5, atol=2e-4)
        # an odd reduction width falls back to fewer slices instead of failing
        assert _split_k_parts(1, 769, x.device) == 1
    finally:
        torch.set_num_threads(threads)


def test_split_k_is_invisible_to_compile_and_export():
    """torch.compile and ONNX export must see one matmul (inductor's GEMV, ORT's MatMul
    quantizers); under tracing the split is off."""
    from unittest import mock

    from gpteval.model import _split_k_parts

    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with mock.patch("torch.compiler.is_compiling", return_value=True):
            assert _split_k_parts(1, 768, torch.device("cpu")) == 1
        with mock.patch("torch.onnx.is_in_onnx_export", return_value=True):
            assert _split_k_parts(1, 768, torch.device("cpu")) == 1
        assert _split_k_parts(1, 768, torch.device("meta")) == 1  # CPU only
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize("packed", [False, True])
def test_every_projection_runs_through_its_module_call(packed):
    """Calibration (prune-wanda's activation norms) and profiling hook each projection's
    module: a forward that calls a projection's math directly, bypassing nn.Module.__call__
    (as a gelu fused into c_fc once did), would leave that projection unseen."""
    from gpteval.packed import packing_unavailable
    from gpteval.projections import Conv1D

    if packed and packing_unavailable(torch.zeros(2, 2)) is not None:
        pytest.skip("this torch build cannot pack weights")
    torch.manual_seed(0)
    model = GPT(preset_config("tiny")).eval()
    if packed:
        model.pack_weights_()
    seen = []
    projections = [m for m in model.modules() if isinstance(m, Conv1D)]
    for m in projections:
        m.register_forward_hook(lambda mod, inp, out: seen.append(mod))
    with torch.inference_mode():
        model(torch.randint(0, 256, (1, 9)))
        model.setup_cache(1, 16)
        model.prefill(torch.randint(0, 256, (1, 9)))
    assert len(projections) == 16 and len(seen) == 2 * 16
    assert {id(m) for m in seen} == {id(m) for m in projections}


def test_prefill_runs_the_last_blocks_output_for_the_last_position_only(tiny_model):
    """A prefill needs every position's key and value but only the last position's
    logits: the last block's c_attn sees every row, its c_proj and MLP one row, while
    every earlier block and the teacher-forced forward see them all."""
    rows = {}

    def record(name):
        return lambda mod, inp, out: rows.setdefault(name, []).append(inp[0].shape[-2])

    last, first = tiny_model.transformer.h[-1], tiny_model.transformer.h[0]
    hooks = [last.attn.c_attn.register_forward_hook(record("last.c_attn")),
             last.attn.c_proj.register_forward_hook(record("last.attn.c_proj")),
             last.mlp.c_fc.register_forward_hook(record("last.c_fc")),
             first.mlp.c_fc.register_forward_hook(record("first.c_fc"))]
    ids = torch.randint(0, tiny_model.config.vocab_size, (2, 11))
    with torch.no_grad():
        tiny_model.setup_cache(2, 16)
        tiny_model.prefill(ids)
        tiny_model(ids)
    for h in hooks:
        h.remove()
    assert rows == {"last.c_attn": [11, 11], "last.attn.c_proj": [1, 11],
                    "last.c_fc": [1, 11], "first.c_fc": [11, 11]}


def test_greedy_token_is_torchs_argmax():
    """greedy_token takes numpy's argmax on CPU float32 logits: the same tokens as torch's,
    first maximum on ties, a NaN as the maximum, strided views, and torch's own path for
    other dtypes."""
    from gpteval.model import greedy_token

    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 50257, generator=gen)
    logits[1, 7] = logits[1, 9000] = 50.0  # a tie: the first wins
    logits[2, 11], logits[2, 20] = float("nan"), float("nan")  # the first NaN wins
    logits[0, :] = float("-inf")
    logits[0, 123] = -1e30
    views = [logits, logits[:, ::2], torch.randn(2, 5, 300, generator=gen)[:, -1, :],
             logits.to(torch.bfloat16)]
    for x in views:
        got = greedy_token(x)
        assert got.dtype == torch.int64 and got.shape == (x.shape[0], 1)
        assert torch.equal(got, x.argmax(dim=-1, keepdim=True))
    assert greedy_token(logits)[:, 0].tolist() == [123, 7, 11]
