"""oneDNN-prepacked weights: the CPU inference layout of the reference model's projections.

torch's CPU matmul (`addmm`, `mm`) goes to MKL, which on AMD CPUs runs its AVX2 code even
where the CPU has AVX-512.  oneDNN's inner product over a weight reordered once into its
own blocked layout (what inductor does to frozen weights) measured, on a 2-core AMD EPYC
with AVX-512, GPT-2 small's four block matrices at M = 128 rows:
  addmm 151-184 GFLOP/s  ->  oneDNN packed 364-425 GFLOP/s   (prefill 165-193 -> 74-80 ms)
and over all 48 block matrices in DRAM (340 MB) at M = 1 / 8 rows (decode, batch 1 / 8):
  rows_matmul (split-K bmm) 29 / 14 GB/s  ->  oneDNN packed 38.6 / 33 GB/s.
With oneDNN held to AVX2 (ONEDNN_MAX_CPU_ISA=AVX2) the prefill matmuls were still 22 %
faster and decode on par, so the layout is not a loss on AVX2-only machines.  Rounding
differs from addmm by ~1e-6 per product (another summation order), ~5e-6 in GPT-2's
logits.

The packed copy serves inference only.  `PackedLinear.usable` sends a call back to the
dense weight when autograd is recording (the packed op has no backward), while a graph is
being captured (torch.compile, ONNX export, jit: they must see the plain matmul), and when
the source weight was replaced or changed in place since packing (its storage pointer and
version counter), so a pass that edits weights never runs a stale copy.

Measured engines need no dense copy (`GPT.pack_weights_(drop_dense=True)`): the dense
weight is then swapped for a storage-less NaN stand-in of its shape, so the packed copy
is held *instead of* it, not beside it (GPT-2 small: 471 MB saved), and any path that
would still read the dense weight fails loudly (an error where we can see it coming, NaN
logits elsewhere) rather than computing with garbage.  `unpack()` recovers the exact
weight (a product with the identity: every term but one is an exact zero).
"""

from __future__ import annotations

import math

import torch

# Row count oneDNN picks the blocked layout for.  Measured (GPT-2 small, 2 threads): a
# layout for 128 rows served M = 1 decode at 38.6 GB/s where the one for M = 1 gave 29;
# and M = 32..512 prefills within 2 % of a layout made for their own M.
ROWS_HINT = 128

_OPS = ("_reorder_linear_weight", "_linear_pointwise")


def in_graph_capture() -> bool:
    """True while torch.compile, ONNX export or TorchScript is tracing: those must see the
    plain matmul (inductor writes its own kernels, ORT's quantizers look for MatMul).
    Compile's check first: dynamo cannot trace the other calls."""
    if torch.compiler.is_compiling() or torch.onnx.is_in_onnx_export():
        return True
    return torch.jit.is_tracing() or torch.jit.is_scripting()


def packing_unavailable(weight: torch.Tensor) -> str | None:
    """Why `weight` cannot get a packed copy here, or None when it can."""
    if not torch.backends.mkldnn.is_available():
        return "this torch build has no oneDNN (mkldnn)"
    if not all(hasattr(torch.ops.mkldnn, op) for op in _OPS):
        return f"this torch build lacks torch.ops.mkldnn.{'/'.join(_OPS)}"
    if weight.device.type != "cpu":
        return f"weights on {weight.device.type}, packing is for CPU"
    if weight.dtype != torch.float32:
        return f"weights are {weight.dtype}, packing is for float32"
    if weight.layout != torch.strided or type(weight) not in (torch.Tensor, torch.nn.Parameter):
        return "weights are not plain dense tensors (quantized or sparse)"
    if is_stand_in(weight):
        return "the dense weights were dropped after an earlier packing"
    return None


def _version(t: torch.Tensor) -> int:
    try:
        return t._version
    except RuntimeError:  # inference tensors keep no version counter
        return -1


def _dropped() -> None:
    return None


def dense_stand_in(like: torch.Tensor) -> torch.Tensor:
    """A tensor of `like`'s shape and dtype backed by one NaN: what a dropped dense weight
    becomes.  Reads give NaN; in-place writes fail (every element shares one location)."""
    return torch.full((), float("nan"), dtype=like.dtype, device=like.device).expand(like.shape)


def is_stand_in(t: torch.Tensor) -> bool:
    """Whether `t` looks like a `dense_stand_in` (every stride 0); asks no data pointer, so
    it also answers for the fake tensors a graph capture traces with."""
    return t.dim() > 0 and all(s == 0 for s in t.stride())


class PackedLinear:
    """A oneDNN-blocked copy of one projection weight, for `y = x @ W + b` with W stored
    (in, out) as the reference model keeps it.  A deep copy or pickle of a module drops it
    (None): the copy's weights are new tensors, and opaque oneDNN tensors have no storage
    to copy; pack the copy again.  Once its dense weight is dropped it refuses to be copied:
    the copy would be left with only the NaN stand-in."""

    dense_dropped = False

    def __init__(self, weight_in_out: torch.Tensor) -> None:
        w = weight_in_out.detach()
        self.packed = torch.ops.mkldnn._reorder_linear_weight(w.t().contiguous(), ROWS_HINT)
        self.shape = tuple(w.shape)  # (in, out)
        self.dtype = w.dtype
        self.bind(weight_in_out, dense_dropped=False)

    @property
    def nbytes(self) -> int:
        """Bytes of the weight this copy holds (the same as its dense form)."""
        return math.prod(self.shape) * self.dtype.itemsize

    def __reduce__(self):
        if self.dense_dropped:
            raise TypeError("this model holds some weights only in their oneDNN-packed "
                            "copies; call model.unpack_weights_() before copying or saving it")
        return (_dropped, ())

    def bind(self, weight_in_out: torch.Tensor, dense_dropped: bool) -> None:
        """Make `weight_in_out` (the stand-in or the recovered weight) the one `usable`
        checks against, and record whether the dense weight is gone."""
        self._ptr = weight_in_out.data_ptr()
        self._version = _version(weight_in_out)
        self.dense_dropped = dense_dropped

    def unpack(self) -> torch.Tensor:
        """The exact (in, out) weight, from the packed copy: I @ W."""
        with torch.inference_mode(False), torch.no_grad():
            return self(torch.eye(self.shape[0], dtype=self.dtype), None)

    def current(self, weight_in_out: torch.Tensor) -> bool:
        """Whether `weight_in_out` is still the tensor this copy was bound to, unchanged."""
        return (weight_in_out.data_ptr() == self._ptr
                and _version(weight_in_out) == self._version)

    def usable(self, weight_in_out: torch.Tensor, x2: torch.Tensor) -> bool:
        """Whether this call may run on the packed copy (see the module docstring)."""
        if torch.is_grad_enabled() and (weight_in_out.requires_grad or x2.requires_grad):
            return False  # the packed op has no autograd: it would cut the graph here
        return x2.device.type == "cpu" and x2.dtype == self.dtype and self.current(weight_in_out)

    def __call__(self, x2: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        return torch.ops.mkldnn._linear_pointwise(x2, self.packed, bias, "none", [], "")
