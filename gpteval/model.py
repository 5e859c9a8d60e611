"""The reference GPT: GPT-2 architecture in one readable file (after nanoGPT).

Module names match Hugging Face GPT-2 checkpoints (`transformer.wte`, `h.N.attn.c_attn`,
`ln_f`, ...), and projection weights are stored the way GPT-2's Conv1D stores them,
(in_features, out_features), so loading a checkpoint is a key-by-key copy.  That layout
is also the fast one for batch-1 decode on CPU: `x @ W` with W (in, out) streams the
weight matrix row by row, while `F.linear` with W (out, in) measured about half the
memory bandwidth on our 2-core machines.

Inference is split the way it runs: `setup_cache(batch, max_len)` preallocates a static
KV cache, `prefill(idx)` fills it and `decode(token, input_pos)` appends one token.
`forward(idx)` is the plain full-sequence pass used for training and perplexity.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from .activations import gelu_tanh
from .packed import PackedLinear, dense_stand_in, packing_unavailable
from .projections import (  # noqa: F401  (rows_matmul, _split_k_parts: re-exported)
    Conv1D,
    LinearHead,
    TransposedHead,
    _split_k_parts,
    rows_matmul,
)


@dataclass
class GPTConfig:
    vocab_size: int = 50257
    n_positions: int = 1024  # longest sequence the learned positions cover
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    layer_norm_eps: float = 1e-5
    dropout: float = 0.0  # training only; inference never drops
    name: str = "custom"

    def __post_init__(self) -> None:
        for key in ("vocab_size", "n_positions", "n_layer", "n_head", "n_embd"):
            value = getattr(self, key)
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f"GPTConfig.{key} must be a positive integer, got {value!r}")
        if self.n_embd % self.n_head:
            raise ValueError(
                f"GPTConfig.n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})"
            )

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> GPTConfig:
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in data.items() if k in known})


# GPT-2's exact shapes; `tiny` is the bundled byte-level model.
PRESETS: dict[str, dict] = {
    "tiny": {"vocab_size": 256, "n_positions": 256, "n_layer": 4, "n_head": 4, "n_embd": 256},
    "gpt2": {"n_layer": 12, "n_head": 12, "n_embd": 768},
    "gpt2-medium": {"n_layer": 24, "n_head": 16, "n_embd": 1024},
    "gpt2-large": {"n_layer": 36, "n_head": 20, "n_embd": 1280},
    "gpt2-xl": {"n_layer": 48, "n_head": 25, "n_embd": 1600},
}


def preset_config(name: str) -> GPTConfig:
    if name not in PRESETS:
        raise KeyError(name)
    return GPTConfig(name=name, **PRESETS[name])


class KVCache(nn.Module):
    """Static-shape key/value cache: (B, nh, max_len, hs) per layer, written in place."""

    def __init__(self, batch: int, n_head: int, max_len: int, head_dim: int, dtype, device) -> None:
        super().__init__()
        shape = (batch, n_head, max_len, head_dim)
        self.register_buffer("k", torch.zeros(shape, dtype=dtype, device=device), persistent=False)
        self.register_buffer("v", torch.zeros(shape, dtype=dtype, device=device), persistent=False)

    def update(self, input_pos: torch.Tensor, k: torch.Tensor, v: torch.Tensor):
        # input_pos: (T,) positions written; k, v: (B, nh, T, hs)
        self.k.index_copy_(2, input_pos, k)
        self.v.index_copy_(2, input_pos, v)
        return self.k, self.v

    def write_prefix(self, k: torch.Tensor, v: torch.Tensor) -> None:
        """k, v (B, nh, T, hs) into positions 0..T-1 (a prefill): a slice copy, which on
        GPT-2 small's (1, 12, 128, 64) took 8 us against index_copy_'s 40."""
        T = k.shape[2]
        self.k[:, :, :T].copy_(k)
        self.v[:, :, :T].copy_(v)


def _decode_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                      mask: torch.Tensor) -> torch.Tensor:
    """Attention of new positions over the whole masked cache.  Compiled for the CPU it is
    written out (scores, softmax, weighted sum): inductor fuses that with the layer's
    other small ops into one kernel, where SDPA stays an opaque call plus views around it.
    Measured on gpt2 decode (tools/profile_decode.py): 349 -> 97 ops a step, attention
    95 -> 69 us a layer, ~0.4-0.8 ms a step less; logits move by rounding (~1e-6)."""
    if not (torch.compiler.is_compiling() and q.device.type == "cpu"):
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    scores = (q @ k.transpose(-1, -2)) * (q.shape[-1] ** -0.5)
    scores = scores.masked_fill(~mask, float("-inf"))
    return torch.softmax(scores, dim=-1) @ v


class CausalSelfAttention(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.n_head = config.n_head
        self.head_dim = config.n_embd // config.n_head
        self.c_attn = Conv1D(config.n_embd, 3 * config.n_embd)
        self.c_proj = Conv1D(config.n_embd, config.n_embd)
        self.dropout = config.dropout
        self.kv_cache: KVCache | None = None
        # a pass's own kernel for a prefill's attention, (qkv, last_only) -> y (B, T or 1,
        # width), or None for SDPA below: fused-decode sets one (optimizers/fused_prefill.py)
        self.prefill_attention = None

    def forward(self, x: torch.Tensor, input_pos: torch.Tensor | None = None,
                mask: torch.Tensor | None = None, last_only: bool = False) -> torch.Tensor:
        """Self-attention of x (B, T, C); with `last_only` (a prefill's last block) the
        cache still gets every position's key and value, but only the last position's
        output is computed and returned (B, 1, C)."""
        B, T, _ = x.shape
        nh = self.n_head
        # width of q/k/v follows c_attn, so attention-head pruning can shrink it;
        # out_features (not weight.shape) also holds for nn.Linear stand-ins of quantizers
        width = self.c_attn.out_features // 3
        hs = width // nh
        qkv = self.c_attn(x)
        q, k, v = qkv.split(width, dim=2)
        q = q.view(B, T, nh, hs).transpose(1, 2)  # (B, nh, T, hs)
        k = k.view(B, T, nh, hs).transpose(1, 2)
        v = v.view(B, T, nh, hs).transpose(1, 2)
        if self.kv_cache is not None and input_pos is not None:
            if mask is None:
                # prefill from position 0 (input_pos is 0..T-1): the new tokens only see
                # each other
                self.kv_cache.write_prefix(k, v)
                y = self.prefill_attention(qkv, last_only) if self.prefill_attention else None
                if y is not None:  # None: the kernel leaves this length to SDPA
                    return self.c_proj(y)
                if last_only:  # the last position attends to every one: no mask
                    q, T = q[:, :, -1:], 1
                y = F.scaled_dot_product_attention(q, k, v, is_causal=T > 1)
            else:
                k_all, v_all = self.kv_cache.update(input_pos, k, v)
                y = _decode_attention(q, k_all, v_all, mask)
        else:
            p = self.dropout if self.training else 0.0
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=p)
        y = y.transpose(1, 2).contiguous().view(B, T, width)  # (B, T, nh*hs)
        return self.c_proj(y)


class MLP(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.c_fc = Conv1D(config.n_embd, 4 * config.n_embd)
        self.c_proj = Conv1D(4 * config.n_embd, config.n_embd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c_proj(gelu_tanh(self.c_fc(x)))  # GPT-2's gelu_new


class Block(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, eps=config.layer_norm_eps)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.n_embd, eps=config.layer_norm_eps)
        self.mlp = MLP(config)

    def forward(self, x, input_pos=None, mask=None, last_only=False):
        a = self.attn(self.ln_1(x), input_pos, mask, last_only)
        x = (x[:, -1:] if last_only else x) + a
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.config = config
        self.transformer = nn.ModuleDict({
            "wte": nn.Embedding(config.vocab_size, config.n_embd),
            "wpe": nn.Embedding(config.n_positions, config.n_embd),
            "h": nn.ModuleList([Block(config) for _ in range(config.n_layer)]),
            "ln_f": nn.LayerNorm(config.n_embd, eps=config.layer_norm_eps),
        })
        # lm_head shares the token embedding (GPT-2 ties them); passes may untie it.
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.lm_head.weight = self.transformer.wte.weight
        self.apply(self._init_weights)
        # GPT-2's scaled init of residual projections
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))
        self.max_batch = 0
        self.max_len = 0

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, Conv1D)):
            nn.init.normal_(module.weight, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, std=0.02)

    def transpose_lm_head_(self) -> GPT:
        """Inference layout of the output projection (see TransposedHead); in place."""
        if isinstance(self.lm_head, nn.Linear):
            self.lm_head = TransposedHead(self.lm_head.weight)
        return self

    def packable_lm_head_(self) -> GPT:
        """A bias-free nn.Linear lm_head whose weight can be packed becomes a LinearHead:
        same weight, same layout, and `pack_weights_` can give it a packed copy; in place.
        Any other head stays (a quantized weight, one of torchao's tensor subclasses, has
        no transpose to pack, and its nn.Linear already runs the quantized kernel)."""
        head = self.lm_head
        if (type(head) is nn.Linear and head.bias is None
                and packing_unavailable(head.weight) is None):
            self.lm_head = LinearHead(head.weight)
        return self

    def pack_weights_(self, drop_dense: bool = False) -> tuple[int, str | None]:
        """oneDNN-packed copies of every float32 projection weight for CPU inference
        (packed.py); in place.  Returns (how many were packed, why none was: None when
        there was no plain projection left to pack, e.g. all quantized).
        The dense weights stay (training, passes, compile and export use them) unless
        `drop_dense`: then each becomes a storage-less NaN stand-in and the packed copy is
        the only one, for a model that will only run eager inference from here on
        (`unpack_weights_` brings the dense weights back)."""
        count, reason = 0, None
        for m, w in self._projections():
            # a copy packed before from this weight, unchanged since, is kept as it is
            if m.packed is None or not m.packed.current(w):
                reason = packing_unavailable(w)
                if reason is not None:
                    continue
                m.packed = PackedLinear(w)
            # a view's storage belongs to another tensor (a LinearHead's is the embedding
            # table): there is nothing of its own to drop
            if drop_dense and not m.packed.dense_dropped and not w._is_view():
                w.data = dense_stand_in(w)
                m.packed.bind(w, dense_dropped=True)
            count += 1
        return count, (None if count else reason)  # reason None: nothing to pack

    def unpack_weights_(self) -> int:
        """Recover the exact dense weights that `pack_weights_(drop_dense=True)` dropped,
        from their packed copies (which stay); in place.  Returns how many."""
        count = 0
        for m, w in self._projections():
            if m.packed is not None and m.packed.dense_dropped:
                w.data = m.packed.unpack()
                m.packed.bind(w, dense_dropped=False)
                count += 1
        return count

    def packed_nbytes(self) -> int:
        """Bytes the packed copies hold on top of the dense weights (a packed copy whose
        dense weight was dropped holds the same bytes instead of it, counted there)."""
        return sum(m.packed.nbytes for m, _ in self._projections()
                   if m.packed is not None and not m.packed.dense_dropped)

    def _projections(self):
        """(module, weight stored (in, out)) of every projection that can hold a packed copy."""
        for m in self.modules():
            if isinstance(m, Conv1D):
                yield m, m.weight
            elif isinstance(m, TransposedHead):
                yield m, m.weight_t
            elif isinstance(m, LinearHead):
                yield m, m.weight.t()

    def num_params(self) -> int:
        return sum(p.numel() for p in {id(p): p for p in self.parameters()}.values())

    # ---- training / perplexity -------------------------------------------------------
    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None):
        """Full-sequence logits (B, T, V); with targets also the mean cross-entropy."""
        T = idx.shape[1]
        if T > self.config.n_positions:
            raise ValueError(f"sequence of {T} tokens exceeds n_positions={self.config.n_positions}")
        pos = torch.arange(T, device=idx.device)
        x = self.transformer.wte(idx) + self.transformer.wpe(pos)  # (B, T, C)
        for block in self.transformer.h:
            x = block(x)
        logits = self.lm_head(self.transformer.ln_f(x))  # (B, T, V)
        if targets is None:
            return logits
        loss = F.cross_entropy(logits.float().view(-1, logits.size(-1)), targets.view(-1))
        return logits, loss

    # ---- inference with a static KV cache ---------------------------------------------
    def setup_cache(self, batch: int, max_len: int) -> None:
        """Preallocate the KV cache for `batch` sequences of up to `max_len` tokens."""
        if max_len > self.config.n_positions:
            raise ValueError(f"max_len {max_len} exceeds n_positions={self.config.n_positions}")
        ref = self.transformer.wpe.weight
        # cache dtype follows the activations (the embedding dtype)
        for block in self.transformer.h:
            attn = block.attn
            hs = attn.c_attn.out_features // 3 // attn.n_head
            attn.kv_cache = KVCache(batch, attn.n_head, max_len, hs, ref.dtype, ref.device)
        self.register_buffer(
            "causal_mask",
            torch.tril(torch.ones(max_len, max_len, dtype=torch.bool, device=ref.device)),
            persistent=False,
        )
        self.max_batch, self.max_len = batch, max_len

    def _step(self, idx: torch.Tensor, input_pos: torch.Tensor, mask) -> torch.Tensor:
        x = self.transformer.wte(idx) + self.transformer.wpe(input_pos)
        # generation needs the next token's logits only: the lm_head over every prompt
        # position is a third of GPT-2 124M's prefill FLOPs (HF generate: logits_to_keep=1).
        # Likewise the last block of a prefill needs every position's key and value but the
        # last position's output only: its attention output, c_proj and MLP run on one row
        # (GPT-2 small, prompt 128: 1.5 of 21.7 GFLOP, ~7 ms of a ~125 ms prefill)
        last = len(self.transformer.h) - 1
        for i, block in enumerate(self.transformer.h):
            x = block(x, input_pos, mask, last_only=mask is None and i == last)
        return self.lm_head(self.transformer.ln_f(x[:, -1:]))

    def prefill(self, idx: torch.Tensor) -> torch.Tensor:
        """Fill the cache with a prompt (B, T) from position 0; returns the last position's
        logits (B, 1, V), the next token's."""
        if self.max_len == 0:
            raise RuntimeError("call setup_cache(batch, max_len) before prefill")
        T = idx.shape[1]
        if T > self.max_len:
            raise ValueError(f"prompt of {T} tokens exceeds the cache length {self.max_len}")
        input_pos = torch.arange(T, device=idx.device)
        return self._step(idx, input_pos, None)

    def decode(self, token: torch.Tensor, input_pos: torch.Tensor) -> torch.Tensor:
        """Append one token per sequence, token (B, 1) at position input_pos (1,); logits (B, V)."""
        mask = self.causal_mask[None, None, input_pos]  # (1, 1, 1, max_len)
        return self._step(token, input_pos, mask)[:, -1, :]

    @torch.no_grad()
    def generate(self, idx: torch.Tensor, max_new_tokens: int, temperature: float = 0.0,
                 top_k: int | None = None, seed: int | None = None) -> torch.Tensor:
        """Greedy (temperature 0) or sampled continuation of idx (B, T); returns (B, T+N)."""
        B, T = idx.shape
        total = T + max_new_tokens
        if total > self.config.n_positions:
            raise ValueError(f"{T} prompt + {max_new_tokens} new tokens exceed n_positions="
                             f"{self.config.n_positions}")
        gen = None
        if temperature > 0:
            gen = torch.Generator(device=idx.device)
            gen.manual_seed(0 if seed is None else seed)
        self.setup_cache(B, total)
        logits = self.prefill(idx)[:, -1, :]
        out = [idx]
        for i in range(max_new_tokens):
            nxt = sample_next(logits, temperature, top_k, gen)  # (B, 1)
            out.append(nxt)
            if i + 1 < max_new_tokens:
                pos = torch.tensor([T + i], device=idx.device)
                logits = self.decode(nxt, pos)
        return torch.cat(out, dim=1)


def greedy_token(logits: torch.Tensor) -> torch.Tensor:
    """argmax(logits, dim=-1, keepdim=True) as int64: the greedy next token (B, 1) of (B, V).

    CPU float32 logits go through numpy, whose argmax is vectorized: 6 µs over GPT-2's
    50,257 logits where torch's CPU argmax, a scalar loop, took 44 (0.4 % of a 9.5 ms
    decode step, paid by every generated token).  The same answer: the first maximum, and a
    NaN counts as the maximum, as in torch (tests/test_model.py holds both to it)."""
    if (logits.device.type != "cpu" or logits.dtype != torch.float32 or logits.requires_grad
            or torch.compiler.is_compiling()):
        return logits.argmax(dim=-1, keepdim=True)
    return torch.from_numpy(np.argmax(logits.numpy(), axis=-1, keepdims=True).astype(np.int64))


def sample_next(logits: torch.Tensor, temperature: float = 0.0, top_k: int | None = None,
                generator: torch.Generator | None = None) -> torch.Tensor:
    """Next token (B, 1) from logits (B, V): argmax at temperature 0, else top-k sampling."""
    if temperature <= 0:
        return greedy_token(logits)
    logits = logits.float() / temperature
    if top_k is not None:
        v, _ = torch.topk(logits, min(top_k, logits.size(-1)))
        logits = logits.masked_fill(logits < v[:, [-1]], float("-inf"))
    probs = F.softmax(logits, dim=-1)
    return torch.multinomial(probs, num_samples=1, generator=generator)
