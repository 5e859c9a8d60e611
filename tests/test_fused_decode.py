"""fused-decode: the C decode step against eager, across cache shapes, pruned widths and
the errors a user can cause.  (test_passes.py holds it to eager at batch 2 as well.)"""

from __future__ import annotations

import platform
import subprocess

import pytest
import torch

from gpteval.engine import TorchEngine
from gpteval.model import GPT, GPTConfig
from optimizers import (
    PassContext,
    PassError,
    fused_build,
    fused_decode,
    fused_prefill,
    parse_pipeline,
    pass_class,
    run_pipeline,
)

CFG = GPTConfig(vocab_size=300, n_positions=96, n_layer=2, n_head=3, n_embd=96, name="fused")

pytestmark = pytest.mark.skipif(fused_decode.compiler() is None,
                                reason="fused-decode needs a C compiler (gcc)")


def model(cfg: GPTConfig = CFG, seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    m = GPT(cfg).eval()
    with torch.no_grad():  # non-zero biases and norms: a kernel that dropped one would show
        for name, p in m.named_parameters():
            if name.endswith("bias") or ".ln_" in name or "ln_f" in name:
                p.add_(torch.randn_like(p) * 0.1)
    return m


def build(variant: str, m: GPT, tmp_path) -> TorchEngine:
    return run_pipeline(parse_pipeline(variant), TorchEngine(m), PassContext(workdir=tmp_path),
                        layout=True)


def greedy_logits(engine, ids: torch.Tensor, steps: int, max_len: int) -> torch.Tensor:
    engine.reset(ids.shape[0], max_len)
    logits = engine.prefill(ids)[:, -1]
    out = []
    for _ in range(steps):
        logits = engine.decode(logits.argmax(-1, keepdim=True))
        out.append(logits)
    return torch.stack(out, 1)


def untied() -> GPT:
    """model() with an lm_head of its own, not tied to the token table."""
    m = model()
    m.lm_head = torch.nn.Linear(CFG.n_embd, CFG.vocab_size, bias=False)
    torch.nn.init.normal_(m.lm_head.weight, std=0.05, generator=torch.Generator().manual_seed(9))
    return m


def assert_decodes_like(eager, fused, threads: int, shapes) -> None:
    """Greedy generation at `threads` threads for each (batch, prompt, max_len) in turn,
    decoding into positions the prompt never reached: same argmax as `eager`, logits
    within float rounding."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for batch, prompt, max_len in shapes:
            ids = torch.randint(0, CFG.vocab_size, (batch, prompt),
                                generator=torch.Generator().manual_seed(batch))
            want = greedy_logits(eager, ids, max_len - prompt, max_len)
            got = greedy_logits(fused, ids, max_len - prompt, max_len)
            assert torch.equal(got.argmax(-1), want.argmax(-1))
            assert (got - want).abs().max().item() < 1e-4
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_matches_eager_across_cache_shapes_and_threads(tmp_path, threads):
    """Batch 1 then 3 (the kernel's buffers are rebuilt for the new cache), several thread
    counts (heads split unevenly at 2: 3 heads), decoding into positions the prompt never
    reached: same argmax, logits within float rounding."""
    eager, fused = build("eager", model(), tmp_path), build("fused-decode", model(), tmp_path)
    assert fused.backend == "fused"
    assert_decodes_like(eager, fused, threads, ((1, 5, 40), (3, 17, 64), (1, 5, 40)))


def test_prefill_logits_come_from_the_kernels_head(tmp_path, monkeypatch):
    """A prefill runs eager up to ln_f and the lm_head on the kernel's copy: the same
    logits as eager's prefill (B, 1, V), at any thread count, through gpteval_head."""
    eager, fused = build("eager", model(), tmp_path), build("fused-decode", model(), tmp_path)
    calls = []
    head = fused.decoder.head
    monkeypatch.setattr(fused.decoder, "head", lambda xn: calls.append(xn.shape) or head(xn))
    ids = torch.randint(0, CFG.vocab_size, (3, 11), generator=torch.Generator().manual_seed(4))
    before = torch.get_num_threads()
    try:
        for threads in (1, 2, 3):
            torch.set_num_threads(threads)
            for engine in (eager, fused):
                engine.reset(3, 16)
            want, got = eager.prefill(ids), fused.prefill(ids)
            assert got.shape == want.shape == (3, 1, CFG.vocab_size)
            assert (got - want).abs().max().item() < 1e-5
    finally:
        torch.set_num_threads(before)
    assert calls == [(3, 1, CFG.n_embd)] * 3


def test_logits_do_not_depend_on_the_thread_count(tmp_path):
    """Threads steal heads and hidden-unit blocks from each other, but every item has its
    own partial and the partials are added in item order: the same bits at 1, 2 and 3
    threads, and on every repeat.  (A per-thread partial, the earlier design, gave other
    bits at other thread counts.)  3 heads and 6 MLP blocks, split unevenly at 2 threads."""
    fused = build("fused-decode", model(), tmp_path)
    ids = torch.randint(0, CFG.vocab_size, (2, 9), generator=torch.Generator().manual_seed(3))
    before = torch.get_num_threads()
    try:
        runs = []
        for threads in (1, 2, 3, 2):
            torch.set_num_threads(threads)
            runs.append(greedy_logits(fused, ids, 20, 40))
    finally:
        torch.set_num_threads(before)
    assert all(torch.equal(r, runs[0]) for r in runs[1:])


def test_pruned_widths_are_padded_not_dropped(tmp_path):
    """Structured pruning leaves an MLP width that is no multiple of the kernel's blocks
    (zero-padded) and fewer heads: the fused step must still match the pruned eager model."""
    pruned = build("prune-structured:0.3", model(), tmp_path)
    fused = build("prune-structured:0.3+fused-decode", model(), tmp_path)
    hidden = pruned.model.transformer.h[0].mlp.c_fc.out_features
    assert hidden % fused_decode.RB, "the test needs a width the kernel has to pad"
    # the prefill's MLP runs at the copy's padded width too
    assert fused.model.transformer.h[0].mlp.c_fc.out_features == -(-hidden // 64) * 64
    ids = torch.randint(0, CFG.vocab_size, (2, 9), generator=torch.Generator().manual_seed(3))
    want, got = greedy_logits(pruned, ids, 12, 24), greedy_logits(fused, ids, 12, 24)
    assert torch.equal(got.argmax(-1), want.argmax(-1))
    assert (got - want).abs().max().item() < 1e-4


def test_weights_are_held_once(tmp_path):
    """The kernel's copy is the only one: the model keeps no block projection, no lm_head
    and no token table of its own (prefill reads the copy too: the table is the tied head's
    columns), weights MB counts the copy once, and a decode step still reads each weight
    once."""
    from gpteval.model import Conv1D

    eager, fused = build("eager", model(), tmp_path), build("fused-decode", model(), tmp_path)
    arena = fused.decoder.arena.nbytes
    assert arena >= eager.decode_nbytes() - 4 * CFG.vocab_size  # every projection, padded
    head = 4 * CFG.vocab_size * CFG.n_embd  # eager's (C, V) lm_head: none in fused's model
    blocks = sum(4 * p.numel() for n, p in eager.model.named_parameters()
                 if ".attn.c_" in n or ".mlp.c_" in n)
    table = head  # the token table, (V, C)
    assert isinstance(fused.model.lm_head, fused_decode.KernelHead)
    assert isinstance(fused.model.transformer.wte, fused_prefill.HeadEmbedding)
    assert not any(isinstance(m, Conv1D) for m in fused.model.modules())
    assert fused.model.packed_nbytes() == 0
    assert fused.nbytes() == eager.nbytes() - head - blocks - table + arena
    assert fused.decode_nbytes() == eager.decode_nbytes()
    assert any("fused_prefill.c" in n for n in fused.notes)


# width 64: 4 output panels in each c_proj, 16 in c_fc, so the GEMMs' 3-panel tiles leave
# one panel over (CFG's widths divide evenly)
CFG_PANELS_LEFT = GPTConfig(vocab_size=300, n_positions=96, n_layer=1, n_head=2, n_embd=64,
                            name="fused-left")


@pytest.mark.parametrize("cfg", [CFG, CFG_PANELS_LEFT], ids=["even", "panels-left"])
def test_prefill_projections_match_the_ones_they_replace(tmp_path, cfg):
    """Each of a layer's four projections, read from the kernel's copy (its column panels
    in the model's column order, its row blocks summed item by item; c_fc with the gelu
    that follows it in the model), gives what the model's own gave, at every row count
    from 1 to 17 and at 33 (so at each count of rows a tile leaves over, whatever the
    tile's height up to 8: 8 with AVX-512, 6 AVX2, 3 SSE; each has its own code), with and
    without panels left over from its 3-panel tiles, from a strided input, at 1 and 3
    threads (the same bits at both); and refuses autograd."""
    from gpteval.activations import gelu_tanh

    ref = model(cfg)
    fused = build("fused-decode", model(cfg), tmp_path)
    before = torch.get_num_threads()
    try:
        for rows in [*range(1, 18), 33]:
            for i in range(cfg.n_layer):
                mine, theirs = fused.model.transformer.h[i], ref.transformer.h[i]
                for name in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"):
                    got_m, want_m = mine.get_submodule(name), theirs.get_submodule(name)
                    assert isinstance(got_m, fused_prefill.ArenaProjection)
                    x = torch.randn(rows, 2 * want_m.in_features,
                                    generator=torch.Generator().manual_seed(rows))[:, ::2]
                    with torch.no_grad():
                        want = want_m(x)
                        if name == "mlp.c_fc":  # gelu runs inside its GEMM
                            want = gelu_tanh(want)
                    by_threads = []
                    for threads in (1, 3):
                        torch.set_num_threads(threads)
                        got = got_m(x)
                        assert got.shape == want.shape, name
                        assert (got - want).abs().max().item() < 1e-5, (name, rows, threads)
                        by_threads.append(got)
                    # panels are shared out by work stealing: the same bits whoever ran one
                    assert torch.equal(*by_threads), (name, rows)
    finally:
        torch.set_num_threads(before)
    with pytest.raises(RuntimeError, match="inference only"):
        fused.model.transformer.h[0].mlp.c_fc(torch.randn(2, cfg.n_embd, requires_grad=True))


def test_prefill_attention_is_causal_attention(tmp_path):
    """The kernel's prefill attention (each block's, from c_attn's output) gives torch's
    causal SDPA, at prompt lengths below, at and past a panel of 16 keys, for each
    sequence of a batch alone, at 1 and 3 threads; its last_only output is the last
    position's, the same bits."""
    import torch.nn.functional as F

    fused = build("fused-decode", model(), tmp_path)
    attend = fused.model.transformer.h[0].attn.prefill_attention
    assert isinstance(attend, fused_prefill.PrefillAttention)
    nh, width = CFG.n_head, CFG.n_embd
    before = torch.get_num_threads()
    try:
        for B, T in [(1, 1), (1, 2), (2, 15), (1, 16), (2, 17), (1, 40)]:
            qkv = 3 * torch.randn(B, T, 3 * width, generator=torch.Generator().manual_seed(T))
            q, k, v = (t.view(B, T, nh, width // nh).transpose(1, 2)
                       for t in qkv.split(width, dim=2))
            want = F.scaled_dot_product_attention(q, k, v, is_causal=True)
            want = want.transpose(1, 2).reshape(B, T, width)
            for threads in (1, 3):
                torch.set_num_threads(threads)
                got = attend(qkv, False)
                assert got.shape == (B, T, width)
                # float32 rounding in another order than SDPA's: ~2e-6 of the largest output
                tol = 4e-6 * want.abs().max().item()
                assert (got - want).abs().max().item() < tol, (B, T, threads)
                assert torch.equal(attend(qkv, True), got[:, -1:]), (B, T, threads)
    finally:
        torch.set_num_threads(before)
    # past its length limit the prefill goes to the blocks' modules, whose attention leaves
    # the prompt to SDPA; within it, the blocks run in fused_blocks.c (no module's
    # attention is called); both match eager's
    ids = torch.randint(0, CFG.vocab_size, (1, 40), generator=torch.Generator().manual_seed(1))
    eager = build("eager", model(), tmp_path)
    eager.reset(1, 64)
    want = eager.prefill(ids)
    calls, real = [], fused_prefill.PrefillAttention.__call__

    def spy(self, qkv, last_only):
        calls.append(real(self, qkv, last_only))
        return calls[-1]

    for limit, used in ((16, False), (40, True)):
        for block in fused.model.transformer.h:
            block.attn.prefill_attention.MAX_POSITIONS = limit
        calls.clear()
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(fused_prefill.PrefillAttention, "__call__", spy)
            fused.reset(1, 64)
            got = fused.prefill(ids)
        assert (calls == []) if used else (calls and all(y is None for y in calls)), limit
        assert (got - want).abs().max().item() < 1e-4, limit


def test_each_threads_share_of_a_phase_is_one_stream(tmp_path):
    """A work item's matrices sit side by side (a head's q, k, v panels then its c_proj rows;
    a unit block's c_fc panels then its c_proj rows), and item after item: the byte ranges
    the kernel reads in a phase, item by item, tile the phase's piece with no gap.  On a
    pruned model too, whose MLP width is padded to the block size."""
    nb, rb = fused_decode.NB, fused_decode.RB
    c, hs = CFG.n_embd, CFG.n_embd // CFG.n_head
    for variant in ("fused-decode", "prune-structured:0.3+fused-decode", "fused-decode:int8"):
        arena = build(variant, model(), tmp_path).decoder.arena
        es = arena.esize  # bytes a weight
        for i, ((heads, hidden), (head_stride, unit_stride)) in enumerate(
                zip(arena.layer_dims, arena.strides)):
            phases = (("attn", "w_qkv", 3 * -(-hs // nb) * nb * c, "w_o", hs * c, heads,
                       head_stride),
                      ("mlp", "w_fc", rb * c, "w_fc2", rb * c, hidden // rb, unit_stride))
            for piece, first, n_first, second, n_second, items, stride in phases:
                at = arena.ptr[f"{i}.{piece}"]
                for item in range(items):
                    for name, n in ((first, n_first), (second, n_second)):
                        assert arena.ptr[f"{i}.{name}"] + es * stride * item == at, \
                            (variant, i, name, item)
                        at += es * n
                assert at == arena.ptr[f"{i}.{piece}"] + es * stride * items


def test_an_untied_head_keeps_the_models_token_table(tmp_path):
    """Only a head tied to the token table can stand in for it: an untied one (another
    checkpoint, a fine-tune that untied them) leaves the model its own table, which prefill
    and the kernel's decode both read."""
    eager, fused = build("eager", untied(), tmp_path), build("fused-decode", untied(), tmp_path)
    assert isinstance(fused.model.transformer.wte, torch.nn.Embedding)
    ids = torch.randint(0, CFG.vocab_size, (2, 7), generator=torch.Generator().manual_seed(2))
    want, got = greedy_logits(eager, ids, 9, 16), greedy_logits(fused, ids, 9, 16)
    assert torch.equal(got.argmax(-1), want.argmax(-1))
    assert (got - want).abs().max().item() < 1e-4


def test_tokens_outside_the_vocabulary_are_refused(tmp_path):
    """The table is the head's zero-padded panels: an id past the vocabulary must raise, in
    prefill and in the kernel's decode, not read padding or another row."""
    fused = build("fused-decode", model(), tmp_path)
    fused.reset(1, 8)
    with pytest.raises(IndexError, match="outside the vocabulary of 300"):
        fused.prefill(torch.tensor([[1, CFG.vocab_size + 3]]))
    fused.reset(1, 8)
    fused.prefill(torch.tensor([[1, 2]]))
    with pytest.raises(IndexError, match="outside the vocabulary of 300"):
        fused.decode(torch.tensor([[CFG.vocab_size]]))
    assert fused.decode(torch.tensor([[CFG.vocab_size - 1]])).shape == (1, CFG.vocab_size)


def test_decode_past_the_cache_is_refused(tmp_path):
    fused = build("fused-decode", model(), tmp_path)
    fused.reset(1, 8)
    fused.prefill(torch.zeros(1, 8, dtype=torch.long))
    with pytest.raises(ValueError, match="the cache holds 1 x 8"):
        fused.decode(torch.zeros(1, 1, dtype=torch.long))


def test_widths_the_kernel_cannot_tile_say_what_to_use(tmp_path):
    odd = GPTConfig(vocab_size=64, n_positions=32, n_layer=1, n_head=2, n_embd=36)
    with pytest.raises(PassError, match="multiples of 16.*compile:max-autotune"):
        build("fused-decode", GPT(odd), tmp_path)


def test_float32_only(tmp_path):
    with pytest.raises(PassError, match="float32"):
        build("bf16+fused-decode", model(), tmp_path)
    with pytest.raises(PassError, match="leave the quantizer out"):
        parse_pipeline("int8-dynamic+fused-decode")
    with pytest.raises(PassError, match="takes no further passes"):
        parse_pipeline("fused-decode+compile")


def test_without_a_compiler_it_is_skipped_with_the_reason(monkeypatch):
    monkeypatch.setattr(fused_decode, "compiler", lambda: None)
    reason = pass_class("fused-decode")().available("cpu")
    assert reason and "C compiler" in reason
    assert "cpu" in (pass_class("fused-decode")().available("cuda") or "")


@pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"), reason="x86-64 targets")
@pytest.mark.parametrize("march", ["x86-64", "x86-64-v3", "x86-64-v4"])  # SSE2, AVX2, AVX-512
@pytest.mark.parametrize("int8", [False, True])
def test_every_vector_operation_is_one_the_cpu_has(march, int8, tmp_path):
    """Built for an AVX2 CPU, the kernel once computed in 16-float vectors that gcc kept on
    the stack and split piecewise (1,187 warnings below), which capped every GEMV at ~6.7 G
    weights/s on a Zen 3: fused-decode 40 tok/s, its int8 build 44.  gcc names each such
    operation with -Wvector-operation-performance; held here for the ISAs it targets."""
    cc = fused_build.compiler()
    version = subprocess.run([cc, "--version"], capture_output=True, text=True, check=False)
    if "Free Software Foundation" not in version.stdout:  # clang has no such warning
        pytest.skip(f"{cc} is not gcc: the check reads gcc's -Wvector-operation-performance")
    flags = [f for f in fused_build.CFLAGS if f not in ("-march=native", "-shared", "-fPIC")]
    for source in fused_build.SOURCES:  # decode step, prefill kernels, prefill blocks
        proc = subprocess.run(
            [cc, *flags, f"-march={march}", "-c", "-Wvector-operation-performance", "-Wpsabi",
             *(["-DGPTEVAL_W_INT8"] if int8 else []), f"-I{fused_build.MATH_HEADER.parent}",
             str(source), "-o", str(tmp_path / f"{source.stem}.o")],
            capture_output=True, text=True, check=False)
        if proc.returncode != 0 and "march" in proc.stderr:
            pytest.skip(f"{cc} does not know -march={march}")
        assert proc.returncode == 0, proc.stderr[-2000:]
        slow = [line for line in proc.stderr.splitlines()
                if "vector-operation-performance" in line or "psabi" in line]
        assert not slow, "\n".join(slow[:10])


def test_a_kernel_that_does_not_build_skips_the_variant(monkeypatch, tmp_path):
    """A compiler that cannot build it (no OpenMP, say): the variant is skipped with the
    compiler's own last line, not a traceback."""
    from optimizers.base import PassSkipped

    monkeypatch.setattr(fused_build, "_libs", {})
    monkeypatch.setenv("GPTEVAL_CACHE", str(tmp_path))
    monkeypatch.setattr(fused_build, "CFLAGS", [*fused_build.CFLAGS, "-Werror=no-such-flag"])
    with pytest.raises(PassSkipped, match="did not build"):
        fused_build.build()
    assert not list(tmp_path.rglob("*.so"))


def test_teacher_forced_forward_runs_the_kernel(tmp_path, monkeypatch):
    """Fidelity and perplexity come from `forward`: for fused-decode it must be the kernel's
    logits (every position), and generation must start afresh after it."""
    eager, fused = build("eager", model(), tmp_path), build("fused-decode", model(), tmp_path)
    ids = torch.randint(0, CFG.vocab_size, (2, 30), generator=torch.Generator().manual_seed(5))
    calls = []
    real = fused.decoder.__call__
    monkeypatch.setattr(type(fused.decoder), "__call__",
                        lambda self, tok, pos: calls.append(int(pos)) or real(tok, pos))
    got, want = fused.forward(ids), eager.forward(ids)
    assert calls == list(range(30))
    assert got.shape == want.shape and (got - want).abs().max().item() < 1e-4
    with pytest.raises(RuntimeError, match="before prefill"):
        fused.decode(ids[:, :1])


def test_layers_of_different_widths(tmp_path):
    """A checkpoint pruned unevenly (another tool, or by hand) has MLPs of different widths
    per layer: each layer's own width must be used, not one for all."""
    from gpteval.model import Conv1D

    def uneven() -> GPT:
        m = model()
        for block, keep in zip(m.transformer.h, (200, 130), strict=True):
            fc, proj = block.mlp.c_fc, block.mlp.c_proj
            new_fc, new_proj = Conv1D(CFG.n_embd, keep), Conv1D(keep, CFG.n_embd)
            with torch.no_grad():
                new_fc.weight.copy_(fc.weight[:, :keep])
                new_fc.bias.copy_(fc.bias[:keep])
                new_proj.weight.copy_(proj.weight[:keep])
                new_proj.bias.copy_(proj.bias)
            block.mlp.c_fc, block.mlp.c_proj = new_fc, new_proj
        return m

    eager, fused = build("eager", uneven(), tmp_path), build("fused-decode", uneven(), tmp_path)
    assert [d[1] for d in fused.decoder.arena.layer_dims] == [256, 192]  # padded to 64
    ids = torch.randint(0, CFG.vocab_size, (1, 6), generator=torch.Generator().manual_seed(4))
    want, got = greedy_logits(eager, ids, 10, 16), greedy_logits(fused, ids, 10, 16)
    assert (got - want).abs().max().item() < 1e-4


def test_a_reset_to_the_same_cache_keeps_the_fast_path(tmp_path, monkeypatch):
    """After reset() the decoder looks at the cache once, then stops looking: a reset to the
    same shape (every latency repeat) must not leave it re-checking on every step."""
    fused = build("fused-decode", model(), tmp_path)
    ids = torch.randint(0, CFG.vocab_size, (1, 5), generator=torch.Generator().manual_seed(4))
    first = greedy_logits(fused, ids, 6, 16)
    setups = []
    real = fused.decoder._setup
    monkeypatch.setattr(fused.decoder, "_setup", lambda t: setups.append(t) or real(t))
    again = greedy_logits(fused, ids, 6, 16)  # reset to the same cache shape
    assert setups == [torch.get_num_threads()]  # once after the reset, not once a step
    assert torch.equal(first, again)


def test_a_new_prompt_without_reset_decodes_from_its_own_keys(tmp_path):
    """The kernel reads keys from its own panel copy, mirrored from the model's cache: a
    second prefill into the same cache (no reset) must replace the first prompt's keys
    there, or the next steps attend to the old prompt."""
    eager, fused = build("eager", model(), tmp_path), build("fused-decode", model(), tmp_path)
    gen = torch.Generator().manual_seed(7)
    first, second = (torch.randint(0, CFG.vocab_size, (1, 9), generator=gen) for _ in range(2))
    fused.reset(1, 40)
    fused.prefill(first)
    for _ in range(20):  # past a panel of 16 positions
        fused.decode(torch.ones(1, 1, dtype=torch.long))
    logits = fused.prefill(second)[:, -1]
    got = []
    for _ in range(12):
        logits = fused.decode(logits.argmax(-1, keepdim=True))
        got.append(logits)
    want = greedy_logits(eager, second, 12, 40)
    assert (torch.stack(got, 1) - want).abs().max().item() < 1e-4


def test_the_kernels_greedy_token_is_the_argmax_of_its_logits(tmp_path):
    """decode_greedy's token comes from the kernel's lm_head phase, not from the logits it
    returns: three sequences over a generation must get greedy_token's answer each step."""
    from gpteval.model import greedy_token

    fused = build("fused-decode", model(), tmp_path)
    ids = torch.randint(0, CFG.vocab_size, (3, 7), generator=torch.Generator().manual_seed(5))
    fused.reset(3, 40)
    token = greedy_token(fused.prefill(ids)[:, -1])
    for _ in range(25):
        logits, token = fused.decode_greedy(token)
        assert token.dtype == torch.int64 and token.shape == (3, 1)
        assert torch.equal(token, greedy_token(logits))


def test_the_kernels_argmax_takes_the_first_largest_and_a_nan_first(tmp_path):
    """Ties and NaNs, as numpy's and torch's argmax: every lm_head column the same (all
    logits tie: token 0), two columns alike apart from the rest (37 and 297 tie, in
    different lm_head items), then NaN columns (the first NaN wins over any number)."""
    from gpteval.model import greedy_token

    fused = build("fused-decode", model(), tmp_path)
    head = fused.decoder.arena.head_panels  # (V / 16, C, 16): column t at [t // 16, :, t % 16]

    def column(t: int, values: torch.Tensor) -> None:
        head[t // 16, :, t % 16] = values

    def step() -> tuple[torch.Tensor, torch.Tensor]:
        fused.reset(1, 8)
        fused.prefill(torch.tensor([[1, 2, 3]]))
        return fused.decode_greedy(torch.tensor([[4]]))

    base = head[0, :, 0].clone()
    for t in range(CFG.vocab_size):
        column(t, base)
    logits, token = step()
    assert (logits == logits[0, 0]).all() and token.item() == 0
    for t in (37, 297):
        column(t, -base)
    logits, token = step()
    assert logits[0, 37] == logits[0, 297] != logits[0, 0]
    assert torch.equal(token, greedy_token(logits)) and token.item() in (0, 37)
    for t in (260, 140):  # items 2 and 1
        column(t, torch.full_like(base, float("nan")))
    logits, token = step()
    assert token.item() == 140 and torch.equal(token, greedy_token(logits))


def test_a_sequences_logits_do_not_depend_on_its_batch(tmp_path):
    """Every sequence of a batch goes through each weight panel with the same accumulators
    in the same order as one sequence alone (fused_decode.c: panel_dots), so its logits are
    the same bits in a batch of 1, 3 or 6 (a group of three rows; of four, then two)."""
    fused = build("fused-decode", model(), tmp_path)
    ids = torch.randint(0, CFG.vocab_size, (6, 20), generator=torch.Generator().manual_seed(6))
    alone = fused.forward(ids[2:3])  # teacher-forced: the kernel a token at a time
    for rows in (slice(1, 4), slice(0, 6)):
        batched = fused.forward(ids[rows])
        assert torch.equal(batched[2 - rows.start], alone[0])
