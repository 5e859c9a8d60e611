"""fused-decode: the whole float32 decode step as one C kernel, one parallel region.

Batch-1 decode streams every weight once.  Run op by op (eager, inductor, ONNX Runtime),
each op boundary makes the threads join and start new memory streams; on a 2-core host
that measured 8-23 % of a single stream's bandwidth (tools/roofline_gap.py: the model's
tensors read one call each against one buffer of the same size).  fused_decode.c runs
a layer as two phases with one barrier each (attention heads, MLP hidden units, each
thread streaming its own contiguous slice of the weights) and reads only the cache
positions written so far (the keys from its own copy, mirrored from the model's cache in
panels of 16 positions, so the scores need no horizontal sums).  Same float32 math as
the reference: sums in another order (split-K partials, four accumulators), logits within
~1e-6 of eager on GPT-2; a batch's sequences share each weight load, each summed as if
alone (the same bits at any batch size), and the greedy next token can come out of the
lm_head phase (`decode_greedy`).

What changes is `decode`, and the prefill's blocks.  The prefill reads the kernel's
weight copy too: the four block projections through fused_prefill.c's GEMMs
(fused_prefill.py: ArenaProjection, near oneDNN's packed GEMM at 128 rows; c_fc with the
gelu inside, ArenaMLP) and its attention kernel, every block in one call of
fused_blocks.c with the layer norms, residual adds and cache writes between them in C
(ArenaPrefill; the blocks' modules still run prompts past its attention's length), its
last position's lm_head through the kernel's own head (KernelHead), and where the head
is tied to the token table (GPT-2) the embedding gathers the head's columns
(HeadEmbedding).  The model keeps no
other copy of them: the variant holds its weights once (gpt2: 475 MiB with its cache, was
965; eager's 622 hold a second, (in, out) lm_head).  The teacher-forced forward runs the kernel token by token,
so fidelity and perplexity measure it.  The weight copy is laid out for the kernel
(fused_layout.py: panels of 16 columns for column-wise reads, zero-padded).

`fused-decode:int8` is the same kernel built for int8 weights (fused_weights.h): each
matrix column quantized on its own with a float scale (fused_layout.py), activations,
norms, attention and the KV cache in float32, so a step reads ~4x fewer weight bytes.
Prefill, the tied embedding and the teacher-forced forward read the same int8 copy.

The C sources ship with the package and are compiled at first use (fused_build.py).
"""

from __future__ import annotations

import ctypes
import sys

import torch
from torch import nn

from gpteval.engine import Engine, TorchEngine
from gpteval.model import GPT

from . import fused_prefill
from .base import (
    Pass,
    PassContext,
    PassError,
    require_torch_engine,
)
from .fused_build import build, compiler
from .fused_layout import NB, RB, WeightArena, head_in_out

_P = ctypes.c_void_p


class _Layer(ctypes.Structure):
    _fields_ = ([(n, _P) for n in ("ln1_w", "ln1_b", "w_qkv", "b_qkv", "w_o", "b_o", "ln2_w",
                                   "ln2_b", "w_fc", "b_fc", "w_fc2", "b_fc2", "k_cache",
                                   "v_cache", "kt_cache")]
                + [(n, ctypes.c_int64) for n in ("n_head", "H", "head_stride",
                                                 "unit_stride")]
                + [(n, _P) for n in ("s_qkv", "s_o", "s_fc", "s_fc2")])


class _Model(ctypes.Structure):
    _fields_ = ([(n, ctypes.c_int64) for n in ("n_layer", "C", "hs", "V", "max_len", "batch",
                                              "max_threads", "wte_panels")]
                + [("eps", ctypes.c_float)]
                + [(n, _P) for n in ("wte", "wpe", "lnf_w", "lnf_b", "w_head", "layers",
                                     "scratch", "partials", "spans")]
                + [("k_mirrored", ctypes.c_int64), ("best", _P), ("s_head", _P)])


class FusedDecoder:
    """Callable decode step `(token (B, 1), pos (1,)) -> logits (B, V)` over a model's KV
    cache, running fused_decode.c."""

    def __init__(self, model: GPT, int8: bool = False) -> None:
        self.lib = build(int8)
        self.model = model
        self.arena = WeightArena(model, int8=int8)
        self._shape: tuple | None = None
        self._threads: int | None = None  # set by _setup; None: check the cache first

    def _setup(self, threads: int) -> None:
        m, cfg, a = self.model, self.model.config, self.arena
        blocks = m.transformer.h
        shape = (m.max_batch, m.max_len, threads, blocks[0].attn.kv_cache.k.data_ptr())
        if shape == self._shape:  # same cache and threads: the struct still holds
            self._threads = threads
            return
        layers = (_Layer * len(blocks))()
        # the kernel's keys as panels of NB positions (fused_decode.c: scores without a
        # horizontal sum a position), mirrored from the model's cache as decode goes
        panels = -(-m.max_len // NB)
        self._kt = [torch.zeros(m.max_batch, a.layer_dims[i][0], panels, a.hs, NB)
                    for i in range(len(blocks))]
        for i, block in enumerate(blocks):
            for f in ("ln1_w", "ln1_b", "w_qkv", "b_qkv", "w_o", "b_o", "ln2_w", "ln2_b",
                      "w_fc", "b_fc", "w_fc2", "b_fc2", "s_qkv", "s_o", "s_fc", "s_fc2"):
                setattr(layers[i], f, a.ptr.get(f"{i}.{f}"))  # scales: int8 weights only
            cache = block.attn.kv_cache
            if not (cache.k.is_contiguous() and cache.k.dtype == torch.float32):
                raise RuntimeError("fused-decode needs a contiguous float32 KV cache")
            layers[i].k_cache, layers[i].v_cache = cache.k.data_ptr(), cache.v.data_ptr()
            layers[i].kt_cache = self._kt[i].data_ptr()
            layers[i].n_head, layers[i].H = a.layer_dims[i]
            layers[i].head_stride, layers[i].unit_stride = a.strides[i]
        tied = isinstance(m.transformer.wte, fused_prefill.HeadEmbedding)
        s = _Model(n_layer=len(blocks), C=cfg.n_embd, hs=a.hs, V=cfg.vocab_size,
                   max_len=m.max_len, batch=m.max_batch,
                   max_threads=threads, wte_panels=int(tied), eps=cfg.layer_norm_eps,
                   wte=a.ptr["w_head"] if tied else m.transformer.wte.weight.data_ptr(),
                   wpe=m.transformer.wpe.weight.data_ptr(), lnf_w=a.ptr["lnf_w"],
                   lnf_b=a.ptr["lnf_b"], w_head=a.ptr["w_head"], s_head=a.ptr.get("s_head"),
                   layers=ctypes.cast(layers, _P))
        per_thread = self.lib.gpteval_scratch_floats(ctypes.byref(s))
        self._scratch = torch.zeros(threads * per_thread, dtype=torch.float32)
        self._partials = torch.zeros(self.lib.gpteval_partials_floats(ctypes.byref(s)),
                                     dtype=torch.float32)
        self._spans = torch.zeros(threads, 8, dtype=torch.int64)  # a 64-byte line each
        # each lm_head item's argmax of each sequence: (float value, int64 index) pairs
        self._best = torch.zeros(m.max_batch * self.lib.gpteval_head_items(ctypes.byref(s)), 2,
                                 dtype=torch.int64)
        s.scratch, s.partials = self._scratch.data_ptr(), self._partials.data_ptr()
        s.spans, s.best = self._spans.data_ptr(), self._best.data_ptr()
        self._layers, self._struct, self._shape = layers, s, shape
        self._struct_ref, self._threads = ctypes.byref(s), threads
        self._token_shape, self._out_shape = (m.max_batch, 1), (m.max_batch, cfg.vocab_size)

    def cache_changed(self) -> None:
        """The model's KV cache may have been reallocated (reset): look again next step."""
        self._threads = None
        self.keys_rewritten()

    def keys_rewritten(self) -> None:
        """A prefill wrote the model's cache: the next step mirrors its keys into the
        kernel's panels afresh (a new struct starts at 0 anyway)."""
        if self._shape is not None:
            self._struct.k_mirrored = 0

    def __call__(self, token: torch.Tensor, pos: torch.Tensor,
                 next_token: torch.Tensor | None = None) -> torch.Tensor:
        """Logits (B, V) of `token` (B, 1) at position `pos` (an int64 tensor of one
        element), which the kernel then advances by one in place; with `next_token` (an
        int64 (B, 1) tensor), the greedy next token written there as well.

        Kept to a few cheap calls: each step streams ~500 MB, which leaves the caches cold,
        and every torch op or module attribute here then costs DRAM misses (measured: the
        Python around the kernel took 0.26 ms of an 8.9 ms gpt2 step; ~0.06 ms warm)."""
        threads = torch.get_num_threads()
        if threads != self._threads:
            self._setup(threads)
        if token.dtype != torch.int64 or not token.is_contiguous():
            token = token.to(torch.int64).contiguous()
        if tuple(token.shape) != self._token_shape or pos.dtype != torch.int64:
            raise ValueError(f"decode of tokens {tuple(token.shape)} ({pos.dtype} position): "
                             f"the cache holds {self._token_shape[0]} sequences, positions int64")
        out = torch.empty(self._out_shape, dtype=torch.float32)
        rc = self.lib.gpteval_decode_step(
            self._struct_ref, token.data_ptr(), pos.data_ptr(), out.data_ptr(),
            None if next_token is None else next_token.data_ptr(), threads)
        if rc == -2:
            raise ValueError(f"decode at position {int(pos[0])}: the cache holds "
                             f"{self._token_shape[0]} x {self.model.max_len}")
        if rc == -3:
            raise IndexError(f"decode of token {token.flatten().tolist()}: outside the "
                             f"vocabulary of {self.model.config.vocab_size}")
        if rc != 0:
            raise RuntimeError(f"fused decode step failed ({rc})")
        return out

    def head(self, xn: torch.Tensor) -> torch.Tensor:
        """Logits (..., V) of hidden states xn (..., C) already through ln_f, from the
        kernel's copy of the lm_head (a prefill's last position: see KernelHead)."""
        threads = torch.get_num_threads()
        if threads != self._threads:
            self._setup(threads)
        x2 = xn.reshape(-1, xn.shape[-1]).to(torch.float32).contiguous()
        out = torch.empty(x2.shape[0], self.model.config.vocab_size, dtype=torch.float32)
        rc = self.lib.gpteval_head(self._struct_ref, x2.data_ptr(), x2.shape[0],
                                   out.data_ptr(), threads)
        if rc != 0:
            raise RuntimeError(f"fused lm_head failed ({rc})")
        return out.view(*xn.shape[:-1], -1)


class KernelHead(nn.Module):
    """A fused-decode model's lm_head: the product runs on the kernel's copy of the output
    projection (column panels on huge pages), which decode streams every step anyway, so
    the model keeps no second, oneDNN-packed copy of it (-154 MB on GPT-2 small).  For a
    prefill's one row per sequence it is also the faster read: GPT-2 small's 154 MB head
    measured 6.1 ms from the packed copy (~25 GB/s, 4 KiB pages) against ~2.7 here."""

    def __init__(self, decoder: FusedDecoder) -> None:
        super().__init__()
        self.decoder = decoder  # not a submodule: it holds no parameters of the model's

    def forward(self, xn: torch.Tensor) -> torch.Tensor:
        return self.decoder.head(xn)


class FusedDecodeEngine(TorchEngine):
    """A TorchEngine whose decode runs fused_decode.c; its prefill runs the blocks in one
    call of fused_blocks.c (ArenaPrefill), on the kernel's weight copy like the head
    (KernelHead).

    `forward` (teacher-forced: fidelity, perplexity, tasks) feeds the sequence through the
    kernel a token at a time (`forward_by_decode`), so the quality numbers are the kernel's
    own, not eager's."""

    backend = "fused"
    forward_by_decode = True

    def __init__(self, te: TorchEngine, int8: bool = False) -> None:
        super().__init__(te.model, te.device)
        self.notes = te.notes
        self.decoder = FusedDecoder(te.model, int8)
        self.decode_fn = self.decoder
        self._arena_step_nbytes = _arena_step_nbytes(te.model, self.decoder.arena.esize)
        # the arena holds these weights now and the model keeps no copy of its own: the
        # lm_head, the block projections, and the token table where the head is tied to it
        # (GPT-2: its rows are the head's columns)
        fused_prefill.route_embedding(te.model, head_in_out(te.model), self.decoder.arena,
                                      NB)
        te.model.lm_head = KernelHead(self.decoder)
        fused_prefill.route_projections(
            te.model, self.decoder.arena, self.decoder.lib, NB, RB)
        self.prefill_fn = fused_prefill.ArenaPrefill(te.model, self.decoder.lib,
                                                     self.decoder.arena)

    def reset(self, batch: int, max_len: int) -> None:
        super().reset(batch, max_len)
        self.decoder.cache_changed()

    def prefill(self, ids: torch.Tensor) -> torch.Tensor:
        logits = super().prefill(ids)
        self.decoder.keys_rewritten()
        return logits

    def decode(self, token: torch.Tensor) -> torch.Tensor:
        # TorchEngine.decode minus its per-step torch calls (no inference_mode either: the
        # kernel records no autograd history): the kernel itself advances the position
        return self.decoder(token if token.dim() == 2 else token.reshape(-1, 1),
                            self._decode_position())

    def decode_greedy(self, token: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # the argmax comes from the kernel's lm_head phase (fused_argmax.h)
        token = token if token.dim() == 2 else token.reshape(-1, 1)
        next_token = torch.empty(token.shape[0], 1, dtype=torch.int64)
        return self.decoder(token, self._decode_position(), next_token), next_token

    def nbytes(self) -> int:
        return super().nbytes() + self.decoder.arena.nbytes

    def decode_nbytes(self) -> int:
        # what eager's count says a step reads: the model itself holds only the norms, the
        # gathered tables and the KV cache now; the kernel also reads the head and the
        # block projections from its copy (for float32, eager's count exactly)
        return super().decode_nbytes() + self._arena_step_nbytes


def _arena_step_nbytes(model: GPT, esize: int) -> int:
    """Bytes a decode step reads of the kernel's copy of the (V, C) head and the block
    projections, before the model hands them over: each weight at `esize` bytes, each bias
    in float32 and, for int8, each output column's float32 scale; padding left out (not a
    weight: GPT-2's head gains 15 zero columns)."""
    mats = [(m.weight, m.bias) for b in model.transformer.h
            for m in (b.attn.c_attn, b.attn.c_proj, b.mlp.c_fc, b.mlp.c_proj)]
    mats.append((head_in_out(model), None))
    weights = sum(w.numel() for w, _ in mats)
    biases = sum(b.numel() for _, b in mats if b is not None)
    scales = sum(w.shape[1] for w, _ in mats) if esize == 1 else 0
    return weights * esize + 4 * (biases + scales)


class FusedDecode(Pass):
    name = "fused-decode"
    summary = ("the decode step as one C kernel in one parallel region (CPU); ':int8' "
               "stores the weights as int8 with a scale per column")
    param = "the weights' storage: float32 (lossless) or int8 (a scale per output column)"
    default = "float32"
    produces = "fused"
    float_weights_only = True
    float_weights_fix = ("fused-decode quantizes float32 weights itself: leave the quantizer "
                         "out and write 'fused-decode:int8' for int8 weights")
    tolerance = 1e-4  # same math, another summation order
    devices = ("cpu",)

    def parse(self, arg: str | None) -> None:
        if arg not in ("float32", "int8"):
            raise PassError(f"'{self.name}:{arg}': choose the weights' storage, "
                            f"'{self.name}' (float32) or '{self.name}:int8'")
        self.int8 = arg == "int8"
        if self.int8:  # quantized: no parity with eager promised, the quality metrics judge it
            self.tolerance = None

    def available(self, device: str) -> str | None:
        reason = super().available(device)  # the device first: it runs on the CPU only
        if reason:
            return reason
        if sys.platform != "linux":
            return ("fused-decode builds its kernel with gcc and OpenMP on Linux, not "
                    f"{sys.platform}")
        if compiler() is None:
            return "needs a C compiler (gcc) to build its kernel; install gcc or set CC"
        return None

    def apply(self, engine: Engine, ctx: PassContext) -> Engine:
        te = require_torch_engine(engine, self.name)
        if te.dtype != torch.float32:
            raise PassError(f"fused-decode runs float32 models; this one is {te.dtype}: leave "
                            "out the dtype pass")
        fused = FusedDecodeEngine(te, self.int8)
        kind = ("int8, a float32 scale per output column" if self.int8 else "float32")
        fused.notes.append(f"{self.spec}: decode step in fused_decode.c (one OpenMP region, "
                           f"{len(te.model.transformer.h) * 2 + 1} phases a step), its own "
                           f"weight copy {fused.decoder.arena.nbytes / 2**20:.0f} MB "
                           f"({kind}) in panels, the only one held: prefill's projections, "
                           "lm_head and tied embedding "
                           "read it too (fused_prefill.c; the prefill's blocks in one "
                           "call, fused_blocks.c); the cache's keys mirrored in "
                           "panels of 16 positions (its K cache's size again); teacher-forced "
                           "forward (fidelity, perplexity) token by token through the kernel")
        return fused


__all__ = ["FusedDecode", "FusedDecodeEngine", "FusedDecoder", "KernelHead", "build"]
