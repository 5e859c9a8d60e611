"""The fused-decode kernel's copy of a model's weights, laid out in the order a decode
step reads them (optimizers/fused_decode.c has the why of each layout).

Matrices the kernel reads column-wise (c_attn, c_fc, the lm_head) become panels of NB
columns ([n/NB][K][NB], zero-padded); the ones it reads row-wise (the two c_proj) become
blocks of rows stored [C/NB][rows][NB]; a work item's pieces sit side by side (a head's
q, k, v panels, then its c_proj rows; a block of RB hidden units' c_fc panels, then its
c_proj rows), so a thread's share of a phase is one stream read front to back.  All of it
is one huge-page allocation, each piece 64-byte aligned.

With `int8=True` (`fused-decode:int8`) the five matrices are stored as int8 in the same
layout, each column quantized symmetrically on its own (scale = max |w| / 127, the
weight rounded to the nearest step), the scales kept beside the biases in the model's
column order; norms, biases and scales stay float32.
"""

from __future__ import annotations

import torch
from torch import nn

from gpteval.hugepages import huge_page_empty
from gpteval.model import GPT, Conv1D, LinearHead, TransposedHead

from .base import PassError

NB = 16  # panel width; must match fused_math.h (NB), as RB must fused_decode.c
RB = 64  # hidden units of the MLP a row block of its second projection holds


def _pad_cols(w: torch.Tensor, n: int) -> torch.Tensor:
    """w (..., k) zero-padded to (..., n) columns."""
    return torch.nn.functional.pad(w, (0, n - w.shape[-1])) if n > w.shape[-1] else w


def _panels(w_in_out: torch.Tensor) -> torch.Tensor:
    """(K, N) -> (ceil(N/NB), K, NB): column panels, each contiguous."""
    k, n = w_in_out.shape
    np_ = -(-n // NB)
    return _pad_cols(w_in_out, np_ * NB).reshape(k, np_, NB).permute(1, 0, 2)


def _row_blocks(w_in_out: torch.Tensor, rows: int) -> torch.Tensor:
    """(R, C) -> (ceil(R/rows), C/NB, rows, NB): blocks of `rows` rows, each stored as its
    C/NB panels of rows x NB, so a block is read front to back (zero rows pad the last)."""
    r, c = w_in_out.shape
    nb = -(-r // rows)
    if nb * rows > r:
        w_in_out = torch.nn.functional.pad(w_in_out, (0, 0, 0, nb * rows - r))
    return w_in_out.reshape(nb, rows, c // NB, NB).permute(0, 2, 1, 3)


def quantize_cols(w_in_out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(K, N) float32 -> int8 (K, N) and a float32 scale per column: w ~ q * scale.  An
    all-zero column (padding) gets scale 1 and zeros."""
    amax = w_in_out.abs().amax(dim=0)
    scale = torch.where(amax > 0, amax / 127.0, torch.ones_like(amax))
    q = torch.round(w_in_out / scale).clamp_(-127, 127).to(torch.int8)
    return q, scale.to(torch.float32)


def _dense(w: torch.Tensor, what: str) -> torch.Tensor:
    if type(w) not in (torch.Tensor, nn.Parameter) or w.dtype != torch.float32 \
            or w.layout != torch.strided or w.device.type != "cpu":
        raise PassError(f"fused-decode runs float32 weights on the CPU; {what} is "
                        f"{type(w).__name__} {w.dtype} on {w.device.type}: leave the "
                        "quantizing or dtype pass out")
    return w.detach()


def head_in_out(model: GPT) -> torch.Tensor:
    """The lm_head's float32 weight as (C, V), whichever head class holds it."""
    head = model.lm_head
    if isinstance(head, TransposedHead):
        return _dense(head.weight_t, "lm_head")
    if isinstance(head, (nn.Linear, LinearHead)) and getattr(head, "bias", None) is None:
        return _dense(head.weight, "lm_head").t()
    raise PassError(f"fused-decode needs a plain float32 lm_head, not {type(head).__name__}")


class WeightArena:
    """The kernel's copy of a model's weights, one allocation in the order a step reads
    them (each piece 64-byte aligned), and the pointers to each piece."""

    def __init__(self, model: GPT, int8: bool = False) -> None:
        self.dtype = torch.int8 if int8 else torch.float32
        self.esize = 1 if int8 else 4  # bytes a weight
        pieces: list[tuple[str, torch.Tensor]] = []

        def stored(w: torch.Tensor, name: str) -> torch.Tensor:
            """w (in, out) as the arena holds it; an int8 copy adds its scales as `name`"""
            if not int8:
                return w
            q, scale = quantize_cols(w)
            pieces.append((name, scale))
            return q

        self.layer_dims: list[tuple[int, int]] = []  # (heads, padded MLP width) per layer
        self.strides: list[tuple[int, int]] = []  # (head_stride, unit_stride) weights
        inside: dict[str, tuple[str, int]] = {}  # matrix -> (piece, float offset), for ptr
        self.hs = 0
        for i, block in enumerate(model.transformer.h):
            attn, mlp = block.attn, block.mlp
            for m in (attn.c_attn, attn.c_proj, mlp.c_fc, mlp.c_proj):
                if not isinstance(m, Conv1D):
                    raise PassError(f"fused-decode needs the reference model's projections; "
                                    f"layer {i} holds {type(m).__name__}")
            nh = attn.n_head
            w_qkv = _dense(attn.c_attn.weight, "c_attn")
            c, three_w = w_qkv.shape
            hs = three_w // 3 // nh
            if c % NB or hs % NB:
                raise PassError(f"fused-decode needs the width ({c}) and the head size ({hs}) "
                                f"to be multiples of {NB} (GPT-2's are 768 and 64); this "
                                "model's are not: use compile:max-autotune instead")
            if self.hs and hs != self.hs:
                raise PassError(f"fused-decode needs one head size in every layer; this model "
                                f"has {self.hs} and {hs}: use compile:max-autotune instead")
            self.hs = hs
            hp = -(-hs // NB)
            w_qkv = stored(w_qkv, f"{i}.s_qkv")
            # (C, 3, nh, hs) -> (nh, 3, panels, C, NB): a head's q, k, v panels together
            qkv = _pad_cols(w_qkv.reshape(c, 3, nh, hs), hp * NB)
            qkv = qkv.reshape(c, 3, nh, hp, NB).permute(2, 1, 3, 0, 4)
            w_fc = _dense(mlp.c_fc.weight, "c_fc")
            hidden = -(-w_fc.shape[1] // RB) * RB  # padded: the kernel takes RB units at a time
            w_fc, b_fc = _pad_cols(w_fc, hidden), _pad_cols(mlp.c_fc.bias.detach(), hidden)
            w_fc = stored(w_fc, f"{i}.s_fc")
            self.layer_dims.append((nh, hidden))
            # per work item, flat: a head's q, k, v panels and its c_proj rows; a block of
            # RB hidden units' c_fc panels and its c_proj rows
            qkv = qkv.reshape(nh, -1)
            w_o = stored(_dense(attn.c_proj.weight, "attn.c_proj"), f"{i}.s_o")
            w_o = _row_blocks(w_o, hs).reshape(nh, -1)
            fc = _panels(w_fc).reshape(hidden // RB, -1)
            fc2 = stored(_dense(mlp.c_proj.weight, "mlp.c_proj"), f"{i}.s_fc2")
            fc2 = _row_blocks(fc2, RB).reshape(hidden // RB, -1)
            # each item's pieces side by side, so a thread's share of a phase is one stream
            # (the kernel's header has the measurement); the kernel steps by these strides
            self.strides.append((qkv.shape[1] + w_o.shape[1], fc.shape[1] + fc2.shape[1]))
            inside.update({f"{i}.w_qkv": (f"{i}.attn", 0),
                           f"{i}.w_o": (f"{i}.attn", qkv.shape[1]),
                           f"{i}.w_fc": (f"{i}.mlp", 0),
                           f"{i}.w_fc2": (f"{i}.mlp", fc.shape[1])})
            pieces += [(f"{i}.ln1_w", block.ln_1.weight), (f"{i}.ln1_b", block.ln_1.bias),
                       (f"{i}.b_qkv", attn.c_attn.bias),
                       (f"{i}.attn", torch.cat([qkv, w_o], 1)), (f"{i}.b_o", attn.c_proj.bias),
                       (f"{i}.ln2_w", block.ln_2.weight), (f"{i}.ln2_b", block.ln_2.bias),
                       (f"{i}.b_fc", b_fc), (f"{i}.mlp", torch.cat([fc, fc2], 1)),
                       (f"{i}.b_fc2", mlp.c_proj.bias)]
        ln_f = model.transformer.ln_f
        head = _panels(stored(head_in_out(model), "s_head"))  # (V/NB, C, NB)
        pieces += [("lnf_w", ln_f.weight), ("lnf_b", ln_f.bias), ("w_head", head)]
        align = 64  # bytes
        offsets, total = {}, 0  # in bytes
        for name, t in pieces:
            offsets[name] = total
            total += -(-t.numel() * t.element_size() // align) * align
        # huge pages: a step streams all of it, and on 4 KiB pages the TLB misses cost
        # ~11 % of the step's bandwidth (gpteval/hugepages.py has the measurement)
        self.buffer = huge_page_empty(total, dtype=torch.uint8)
        views = {}
        for name, t in pieces:
            at = offsets[name]
            views[name] = self.buffer[at:at + t.numel() * t.element_size()].view(t.dtype)
            views[name].view(t.shape).copy_(t)
        base = self.buffer.data_ptr()
        self.ptr = {name: base + off for name, off in offsets.items()}
        # the head's panels (and scales): an embedding can read them too
        self.head_panels = views["w_head"].view(head.shape)
        self.head_scale = views.get("s_head")
        for name, (piece, off) in inside.items():
            self.ptr[name] = self.ptr[piece] + self.esize * off

    @property
    def nbytes(self) -> int:
        return self.buffer.numel()
