"""Projections of the reference GPT and where each product runs.

Weights are stored (in_features, out_features), as GPT-2's Conv1D stores them; on the CPU
an inference-only model may hold a oneDNN-packed copy of each (packed.py), which
`_projection` uses wherever that is safe, else `rows_matmul`.  The output projection has
two inference layouts: TransposedHead (a (C, V) copy, eager decode's fast layout) and
LinearHead (the tied (V, C) weight as it is, for compiled models).
"""

from __future__ import annotations

import torch
from torch import nn

from .packed import PackedLinear, in_graph_capture, is_stand_in

# At most this many rows (batch x new tokens) count as decode-shaped for `rows_matmul`.
# Measured over GPT-2 small's block matrices, 2 threads (effective GB/s, mm -> split-K):
# 1 row 14.5 -> 20.9, 2 rows 8.2 -> 13.6, 8 rows 5.7 -> 6.7, 16 rows 5.0 -> 5.4.
SPLIT_K_MAX_ROWS = 16


def _split_k_parts(rows: int, k: int, device: torch.device) -> int:
    """How many slices of the reduction dimension a few-row CPU matmul is cut into (1: none).

    Measured on a 2-core AMD EPYC (GPT-2 small's 48 block matrices, 340 MB, DRAM-bound):
    torch's `mm` with one row runs on ONE thread whatever set_num_threads says (13.7 GB/s at
    1 and at 2 threads), while a `bmm` over K split in 2-8 slices runs the slices on all
    threads (20.0-20.6 GB/s).  Only in eager mode: torch.compile and ONNX export must see
    the plain matmul (inductor writes its own GEMV; ORT's quantizers look for MatMul)."""
    if device.type != "cpu" or rows > SPLIT_K_MAX_ROWS:
        return 1
    if in_graph_capture():  # before get_num_threads(), which dynamo cannot trace
        return 1
    parts = min(torch.get_num_threads(), 8)
    while parts > 1 and k % parts:
        parts -= 1
    return parts


def rows_matmul(x2: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """`x2 @ w + bias` for x2 (M, K) and w (K, N) stored (in, out).  Few-row products on a
    CPU run as a split-K batched matmul so every thread streams a slice of w (a free view
    of the contiguous weight); the slices' partial sums are added, which changes the
    rounding order only (differences ~1e-7 relative)."""
    parts = _split_k_parts(x2.shape[0], x2.shape[1], x2.device) if w.is_contiguous() else 1
    if parts == 1:
        return x2 @ w if bias is None else torch.addmm(bias, x2, w)
    m, k = x2.shape
    xs = x2.view(m, parts, k // parts).transpose(0, 1)  # (parts, M, K/parts)
    y = torch.bmm(xs, w.view(parts, k // parts, w.shape[1])).sum(0)
    return y if bias is None else y.add_(bias)


def _projection(x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None,
                packed: PackedLinear | None) -> torch.Tensor:
    """`x @ w + bias` over the last dimension, w stored (in, out): on its oneDNN-packed
    copy when there is one this call may use (CPU inference, see packed.py), else
    rows_matmul."""
    shape = x.shape[:-1] + (w.shape[1],)
    x2 = x.reshape(-1, x.shape[-1])
    # graph capture first: compile/export must not touch the opaque packed tensor
    if packed is not None:
        if not in_graph_capture() and packed.usable(w, x2):
            return packed(x2, bias).view(shape)
        if packed.dense_dropped and is_stand_in(w):
            raise RuntimeError("this projection's weight is held only oneDNN-packed, for "
                               "inference (autograd, compile and export need the dense "
                               "weight); call model.unpack_weights_() first")
    return rows_matmul(x2, w, bias).view(shape)


class Conv1D(nn.Module):
    """Affine map with the weight stored (in_features, out_features), as in GPT-2.

    `y = x @ W + b`; addmm on the flattened input keeps the bias add fused.  `packed`, set
    by `GPT.pack_weights_()`, is the CPU inference copy of W (packed.py).
    """

    packed: PackedLinear | None = None

    def __init__(self, in_features: int, out_features: int, bias: bool = True) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(in_features, out_features))
        self.bias = nn.Parameter(torch.zeros(out_features)) if bias else None
        nn.init.normal_(self.weight, std=0.02)

    # derived from the weight, so passes that resize it (pruning) keep them true
    @property
    def in_features(self) -> int:
        return self.weight.shape[0]

    @property
    def out_features(self) -> int:
        return self.weight.shape[1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _projection(x, self.weight, self.bias, self.packed)

    def extra_repr(self) -> str:
        return f"in_features={self.weight.shape[0]}, out_features={self.weight.shape[1]}"


class TransposedHead(nn.Module):
    """The output projection with its weight stored (in, out) = (C, V): batch-1 decode's
    `x @ W` then streams the matrix row by row, which measured ~15 % faster per token on
    GPT-2 small than `F.linear` over the tied (V, C) embedding, with bit-identical logits.
    It costs a second copy of the table (the embedding keeps its (V, C) rows to gather)."""

    packed: PackedLinear | None = None

    def __init__(self, weight: torch.Tensor) -> None:
        super().__init__()
        self.weight_t = nn.Parameter(weight.detach().t().contiguous(), requires_grad=False)

    @property
    def weight(self) -> torch.Tensor:
        """(V, C) view, for code that reads an lm_head the nn.Linear way."""
        return self.weight_t.t()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _projection(x, self.weight_t, None, self.packed)


class LinearHead(nn.Module):
    """The output projection stored (V, C) as nn.Linear stores it, tied weight and all, with
    room for a packed copy: what a compiled model keeps on the CPU.  Its compiled decode
    reads the weight as it is (inductor lays out its own frozen copy), while the eager
    prefill's last-position product runs on the oneDNN-packed copy, without the transposed
    dense copy TransposedHead would add.  State-dict keys are nn.Linear's."""

    packed: PackedLinear | None = None

    def __init__(self, weight: nn.Parameter) -> None:
        super().__init__()
        self.weight = weight  # the same Parameter: a tied embedding stays tied

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _projection(x, self.weight.t(), None, self.packed)
