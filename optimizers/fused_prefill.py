"""fused-decode's prefill projections: the model's four block projections read from the
kernel's own weight copy (WeightArena), through fused_prefill.c; its prefill attention
(PrefillAttention), the decode step's attention math over every prompt position; and the
engine's prefill (ArenaPrefill), which runs all the blocks through those kernels in one
call of fused_blocks.c.

Why: the decode kernel needs its weights laid out for it (column panels, row blocks, each
work item's pieces side by side); eager's prefill ran on a second, oneDNN-packed copy of
every block weight.  The variant held its model twice (gpt2: 965 MB of weights against
eager's 640).  The prefill GEMMs over the kernel's layout run at oneDNN's speed (the C
file's header has the measurement), so the copy serves both and the model keeps no other.

An ArenaProjection is inference-only: it holds no parameters (the weights are the
arena's), has no autograd, and cannot be traced; passes after fused-decode are refused
(it takes no further passes), so nothing needs to.
"""

from __future__ import annotations

import ctypes

import torch
from torch import nn

from gpteval.packed import in_graph_capture

_P, _I64 = ctypes.c_void_p, ctypes.c_int64


def kernel_input(x: torch.Tensor, what: str) -> torch.Tensor:
    """x as the kernel reads it (float32, contiguous); the error for what it cannot serve
    (another device, autograd, a graph being traced), naming `what` refused it."""
    if x.device.type != "cpu" or in_graph_capture() or (
            torch.is_grad_enabled() and x.requires_grad):
        raise RuntimeError(f"a fused-decode model's {what} CPU inference only (no autograd, "
                           "compile or export): build the variant from the unoptimized "
                           "model for that")
    if x.dtype != torch.float32 or not x.is_contiguous():
        x = x.to(torch.float32).contiguous()
    return x


class _Proj(ctypes.Structure):  # fused_blocks.c's Proj: one ArenaProjection
    _fields_ = [("w", _P), ("cols", _P)] + [(n, _I64) for n in ("n", "rows", "in_", "out")] \
        + [("scale", _P), ("bias", _P), ("gelu", _I64)]


class _Layer(ctypes.Structure):  # fused_blocks.c's PrefillLayer
    _fields_ = ([(n, _P) for n in ("ln1_w", "ln1_b", "ln2_w", "ln2_b")]
                + [(n, _Proj) for n in ("qkv", "o", "fc", "fc2")]
                + [("k_cache", _P), ("v_cache", _P), ("n_head", _I64)])


def declare(lib: ctypes.CDLL) -> None:
    """Argument types of fused_prefill.c's and fused_blocks.c's entry points."""
    lib.gpteval_gemm_panels.restype = ctypes.c_int
    lib.gpteval_gemm_panels.argtypes = [_P, _I64, _I64, _P, _P, _I64, _P, _P, _P, _I64,
                                        ctypes.c_int, ctypes.c_int]
    lib.gpteval_gemm_row_blocks.restype = ctypes.c_int
    lib.gpteval_gemm_row_blocks.argtypes = [_P, _I64, _P, _I64, _I64, _I64, _P, _P, _P,
                                            ctypes.c_int]
    lib.gpteval_prefill_blocks.restype = ctypes.c_int
    lib.gpteval_prefill_blocks.argtypes = [_P, _I64, _I64, _I64, _I64, _I64, ctypes.c_float,
                                           _P, _P, ctypes.c_int]
    lib.gpteval_prefill_work_floats.restype = _I64
    lib.gpteval_prefill_work_floats.argtypes = [_P, _I64, _I64, _I64]
    lib.gpteval_prefill_attention.restype = ctypes.c_int
    lib.gpteval_prefill_attention.argtypes = [_P, _I64, _I64, _I64, _I64, ctypes.c_int, _P,
                                              _P, _P, _I64, ctypes.c_int]


class ArenaProjection(nn.Module):
    """`y = x @ W + b` for one projection whose W and b live in the kernel's weight copy.

    Column panels (c_attn, c_fc): `panels[p]` points at panel p (in_features rows of NB
    columns), whose output columns start at `cols[p]`.  Row blocks (the two c_proj):
    `items[i]` points at item i's `rows` rows (a head's, or a block of hidden units'),
    stored as out_features/NB panels of rows x NB.  `owner` keeps the arena alive.
    `gelu` (column panels only): the output goes through GPT-2's gelu inside the GEMM.
    `scale` (int8 weights): the address of a float scale per output column, else None."""

    def __init__(self, lib: ctypes.CDLL, owner: object, in_features: int, out_features: int,
                 bias: int, *, panels: list[int] | None = None, cols: list[int] | None = None,
                 items: list[int] | None = None, rows: int = 0, gelu: bool = False,
                 scale: int | None = None) -> None:
        super().__init__()
        self.lib, self.owner = lib, owner
        self.in_features, self.out_features = in_features, out_features
        self._bias, self._scale = bias, scale
        if panels is not None:
            self._ptrs = (_P * len(panels))(*panels)
            self._cols = (_I64 * len(cols))(*cols)
        else:
            self._ptrs = (_P * len(items))(*items)
            self._rows = rows
            if len(items) * rows != in_features:
                raise ValueError(f"{len(items)} blocks of {rows} rows for {in_features} inputs")
        self._by_panels = panels is not None
        self.gelu = gelu

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x2 = kernel_input(x.reshape(-1, self.in_features), "projections run")
        out = torch.empty(x2.shape[0], self.out_features, dtype=torch.float32)
        threads = torch.get_num_threads()
        if self._by_panels:
            rc = self.lib.gpteval_gemm_panels(x2.data_ptr(), x2.shape[0], self.in_features,
                                              self._ptrs, self._cols, len(self._ptrs),
                                              self._scale, self._bias, out.data_ptr(),
                                              self.out_features, int(self.gelu), threads)
        else:
            rc = self.lib.gpteval_gemm_row_blocks(x2.data_ptr(), x2.shape[0], self._ptrs,
                                                  len(self._ptrs), self._rows,
                                                  self.out_features, self._scale, self._bias,
                                                  out.data_ptr(), threads)
        if rc == -2:
            raise MemoryError(f"no memory to pack a ({x2.shape[0]}, {self.in_features}) input "
                              "for the fused prefill")
        if rc != 0:
            raise RuntimeError(f"fused prefill projection failed ({rc})")
        return out.view(*x.shape[:-1], self.out_features)

    def as_struct(self) -> _Proj:
        """This projection for fused_blocks.c (its pointers stay this module's)."""
        return _Proj(w=ctypes.cast(self._ptrs, _P),
                     cols=ctypes.cast(self._cols, _P) if self._by_panels else None,
                     n=len(self._ptrs), rows=0 if self._by_panels else self._rows,
                     in_=self.in_features, out=self.out_features, scale=self._scale,
                     bias=self._bias, gelu=int(self.gelu))

    def extra_repr(self) -> str:
        layout = "column panels" if self._by_panels else f"row blocks of {self._rows}"
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"{layout} of the fused-decode weight copy"
                + (" (int8, a scale per column)" if self._scale else "")
                + (", then gelu" if self.gelu else ""))


class PrefillAttention:
    """A prefill's causal self-attention from position 0 on the kernel
    (gpteval_prefill_attention in fused_prefill.c): qkv (B, T, 3 * width), c_attn's output,
    to y (B, T, width), or (B, 1, width) with `last_only`; the model has already written
    the keys and values to its cache.  The decode step's own attention math, every
    position against the ones before it; sums in another order than torch's SDPA (the
    logits move by rounding, ~1e-6).  A model attribute, not a module: it holds no state
    but the library and the head count.

    Prompts longer than MAX_POSITIONS it leaves to SDPA (returns None): it takes each
    query alone, where SDPA's flash kernel works in blocks of queries.  gpt2's 12 heads,
    2 threads, a Zen 3: 32 positions 0.06 ms against SDPA's 0.23, 128: 0.54 against 0.81,
    512: 7.9 against 8.7, 1024: 31.0 against 23.2."""

    MAX_POSITIONS = 512

    def __init__(self, lib: ctypes.CDLL, n_head: int) -> None:
        self.lib, self.n_head = lib, n_head

    def __call__(self, qkv: torch.Tensor, last_only: bool) -> torch.Tensor | None:
        if qkv.shape[1] > self.MAX_POSITIONS:
            return None
        qkv = kernel_input(qkv, "prefill attention runs")
        B, T, three_w = qkv.shape
        width = three_w // 3
        y = torch.empty(B, 1 if last_only else T, width, dtype=torch.float32)
        rc = self.lib.gpteval_prefill_attention(qkv.data_ptr(), B, T, self.n_head,
                                                width // self.n_head, int(last_only),
                                                y.data_ptr(), None, None, 0,
                                                torch.get_num_threads())
        if rc == -2:
            raise MemoryError(f"no memory for the fused prefill's keys ({T} positions)")
        if rc != 0:
            raise RuntimeError(f"fused prefill attention failed ({rc})")
        return y


class ArenaPrefill:
    """A fused-decode engine's prefill: the embedding, the final norm and the lm_head are
    the model's modules; its blocks run in one call of fused_blocks.c, through the kernels
    the blocks' modules call, with the glue between them (residual adds, layer norms, the
    KV cache writes) in C too: no Python and no torch op between a layer's kernels.

    Calls it does not take go to the model's own prefill, which runs the blocks' modules
    or refuses with its own error: a prompt past PrefillAttention.MAX_POSITIONS (SDPA
    attends those faster), longer than the cache, a batch other than the cache's, or no
    cache.  `lib` is public so that tools/kernel_ab.py can point it at another build."""

    def __init__(self, model: nn.Module, lib: ctypes.CDLL, arena) -> None:
        self.model, self.lib = model, lib
        blocks = model.transformer.h
        self._layers = (_Layer * len(blocks))()
        for i, block in enumerate(blocks):
            layer = self._layers[i]
            for f in ("ln1_w", "ln1_b", "ln2_w", "ln2_b"):
                setattr(layer, f, arena.ptr[f"{i}.{f}"])
            # the structs point into these modules' pointer arrays: the model keeps them
            layer.qkv, layer.o = block.attn.c_attn.as_struct(), block.attn.c_proj.as_struct()
            layer.fc, layer.fc2 = block.mlp.c_fc.as_struct(), block.mlp.c_proj.as_struct()
            layer.n_head = block.attn.n_head
        self._layers_p = ctypes.addressof(self._layers)
        self._cache_at: int | None = None  # the cache the layers' pointers are into
        self._work = torch.empty(0)

    def _takes(self, ids: torch.Tensor) -> bool:
        m = self.model
        if ids.dim() != 2 or ids.device.type != "cpu" or getattr(m, "max_len", 0) == 0:
            return False
        attn = m.transformer.h[0].attn
        cache, limit = attn.kv_cache, attn.prefill_attention.MAX_POSITIONS
        B, T = ids.shape
        return (0 < T <= min(limit, m.max_len)
                and B == m.max_batch and cache is not None
                and cache.k.dtype == torch.float32 and cache.k.is_contiguous())

    def __call__(self, ids: torch.Tensor) -> torch.Tensor:
        """The next token's logits (B, 1, V) of prompts ids (B, T), from position 0."""
        m = self.model
        if not self._takes(ids):
            return m.prefill(ids)
        blocks, C = m.transformer.h, m.config.n_embd
        if self._cache_at != blocks[0].attn.kv_cache.k.data_ptr():  # a new cache (reset)
            for layer, block in zip(self._layers, blocks):
                layer.k_cache = block.attn.kv_cache.k.data_ptr()
                layer.v_cache = block.attn.kv_cache.v.data_ptr()
            self._cache_at = blocks[0].attn.kv_cache.k.data_ptr()
        B, T = ids.shape
        x = m.transformer.wte(ids) + m.transformer.wpe(torch.arange(T))
        x = kernel_input(x.reshape(B * T, C), "prefill runs")
        n_layer = len(blocks)
        need = self.lib.gpteval_prefill_work_floats(self._layers_p, n_layer, B * T, C)
        if self._work.numel() < need:
            self._work = torch.empty(need, dtype=torch.float32)
        rc = self.lib.gpteval_prefill_blocks(self._layers_p, n_layer, B, T, C, m.max_len,
                                             m.config.layer_norm_eps, x.data_ptr(),
                                             self._work.data_ptr(), torch.get_num_threads())
        if rc == -2:
            raise MemoryError(f"no memory for the fused prefill of {B} x {T} positions")
        if rc != 0:
            raise RuntimeError(f"fused prefill failed ({rc})")
        return m.lm_head(m.transformer.ln_f(x[:B].view(B, 1, C)))


class ArenaMLP(nn.Module):
    """A block's MLP on the arena: c_fc with GPT-2's gelu inside its GEMM (the decode
    kernel's own vectorized gelu, fused_math.h), then the second projection.  The gelu as
    torch ops took ~2.5 ms of a gpt2 prefill's ~125, three passes over each activation."""

    def __init__(self, c_fc: ArenaProjection, c_proj: ArenaProjection) -> None:
        super().__init__()
        self.c_fc, self.c_proj = c_fc, c_proj

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c_proj(self.c_fc(x))


class HeadEmbedding(nn.Module):
    """The token embedding of a model whose lm_head is tied to it (GPT-2): token t's row is
    column t of the head, gathered from the kernel's (V/NB, C, NB) panels of the head, so
    the model keeps no (V, C) table (-147 MiB on GPT-2 small).  A prefill gathers one
    line per float (C lines a token), a few microseconds for 128 tokens.  With int8
    panels, `scale` (V,) holds each column's scale (the row is the int8 column times it,
    as the decode kernel computes it)."""

    def __init__(self, head_panels: torch.Tensor, num_embeddings: int, nb: int,
                 scale: torch.Tensor | None = None) -> None:
        super().__init__()
        self.panels, self.num_embeddings, self.nb = head_panels, num_embeddings, nb
        self.scale = scale
        self.embedding_dim = head_panels.shape[1]

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        if idx.numel():
            lo, hi = (int(v) for v in torch.aminmax(idx))
            if lo < 0 or hi >= self.num_embeddings:
                raise IndexError(f"token ids {lo}..{hi}: outside the vocabulary of "
                                 f"{self.num_embeddings}")
        rows = self.panels[idx // self.nb, :, idx % self.nb]  # (*idx.shape, C)
        if self.scale is None:
            return rows
        return rows.to(torch.float32) * self.scale[idx].unsqueeze(-1)

    def extra_repr(self) -> str:
        return (f"{self.num_embeddings}, {self.embedding_dim}, the columns of the "
                "fused-decode copy of the tied lm_head")


def route_embedding(model: nn.Module, head_in_out: torch.Tensor, arena, nb: int) -> bool:
    """Where the lm_head, whose weight is `head_in_out` (C, V), is tied to the token table
    (the same tensor, or equal to it), swap the table for a HeadEmbedding over the arena's
    head, in place.  Returns whether it did (an untied head keeps the model's own table)."""
    wte, table = model.transformer.wte, head_in_out.t()
    if not (isinstance(wte, nn.Embedding) and table.shape == wte.weight.shape
            and (table.data_ptr() == wte.weight.data_ptr()
                 or torch.equal(table, wte.weight))):
        return False
    model.transformer.wte = HeadEmbedding(arena.head_panels, wte.num_embeddings, nb,
                                          arena.head_scale)
    return True


def route_projections(model: nn.Module, arena, lib: ctypes.CDLL, nb: int, rb: int) -> None:
    """Swap each block's four projections for ArenaProjections over `arena` (built from
    them: same values), and give its attention the kernel's prefill attention, in place."""
    for i, block in enumerate(model.transformer.h):
        attn = block.attn
        c = attn.c_attn.in_features
        nh, (head_stride, unit_stride) = attn.n_head, arena.strides[i]
        width = attn.c_attn.out_features // 3
        hs, hidden = width // nh, arena.layer_dims[i][1]
        hp = hs // nb  # hs is a multiple of nb (WeightArena checks)
        ptr = {k: arena.ptr[f"{i}.{k}"] for k in ("w_qkv", "b_qkv", "w_o", "b_o", "w_fc",
                                                    "b_fc", "w_fc2", "b_fc2")}
        # int8 weights: each matrix's scales (None for float32); es: bytes a weight
        sc = {k: arena.ptr.get(f"{i}.{k}") for k in ("s_qkv", "s_o", "s_fc", "s_fc2")}
        es = arena.esize
        # the copy holds a head's q, k, v panels together; the model's columns are all
        # heads' q, then k, then v
        qkv_panels, qkv_cols = [], []
        for h in range(nh):
            for j in range(3):
                for p in range(hp):
                    qkv_panels.append(ptr["w_qkv"] + es * (h * head_stride + (j * hp + p) * c * nb))
                    qkv_cols.append(j * width + h * hs + p * nb)
        per_unit = rb // nb
        fc_panels = [ptr["w_fc"] + es * (u * unit_stride + q * c * nb)
                     for u in range(hidden // rb) for q in range(per_unit)]
        attn.c_attn = ArenaProjection(lib, arena, c, 3 * width, ptr["b_qkv"],
                                      panels=qkv_panels, cols=qkv_cols, scale=sc["s_qkv"])
        attn.c_proj = ArenaProjection(lib, arena, width, c, ptr["b_o"],
                                      items=[ptr["w_o"] + es * h * head_stride
                                             for h in range(nh)], rows=hs, scale=sc["s_o"])
        attn.prefill_attention = PrefillAttention(lib, nh)
        # the MLP runs at the copy's padded width: padded units have zero weights and bias,
        # gelu(0) = 0, and zero rows in the second projection
        block.mlp = ArenaMLP(
            ArenaProjection(lib, arena, c, hidden, ptr["b_fc"], panels=fc_panels,
                            cols=[k * nb for k in range(len(fc_panels))], gelu=True,
                            scale=sc["s_fc"]),
            ArenaProjection(lib, arena, hidden, c, ptr["b_fc2"],
                            items=[ptr["w_fc2"] + es * u * unit_stride
                                   for u in range(hidden // rb)], rows=rb, scale=sc["s_fc2"]))


__all__ = ["ArenaMLP", "ArenaPrefill", "ArenaProjection", "HeadEmbedding", "PrefillAttention",
           "declare", "route_embedding", "route_projections"]
