"""Attention over a static, in-place KV cache for the exported decode step (ONNX Runtime CPU).

Why: the plain exported graph grows its cache with `Concat` every step and moves heads with
`Transpose`/`Reshape`; profiled with ORT's own profiler on GPT-2 124M int4 (2 threads,
prompt 128, 64 decode steps) those took 1.16 + 0.40 + 0.39 ms of a 9.6 ms step, beside
5.5 ms of MatMulNBits: the cache copy alone grows with the context (each step re-reads and
re-writes every cached key and value).

ORT's contrib op `com.microsoft::GroupQueryAttention` takes the packed (B, T, 3C) q|k|v
projection, writes the new keys/values into a cache buffer of fixed length at position
`total_sequence_length - T` and attends causally over the first `total_sequence_length`
entries.  When the engine binds each `present_*` output to the same buffer as its `past_*`
input, ORT updates the cache in place.  GPT-2 is multi-head attention, i.e. GQA with as
many key/value heads as query heads.

The exporter learns the op through a torch custom op (`gpteval::cached_attention`, with a
reference implementation in PyTorch for tests) and a translation to the contrib node.  The
ONNX package has no schema for contrib ops, so a minimal one is declared here.
ORT's CUDA GroupQueryAttention takes fp16/bf16 only, so the CUDA export keeps the Concat
graph.  onnx and onnxscript are imported inside functions only.
"""

from __future__ import annotations

import math

import torch

OP_NAME = "gpteval::cached_attention"
TOTAL_INPUT = "total_sequence_length"


@torch.library.custom_op(OP_NAME, mutates_args=())
def cached_attention(qkv: torch.Tensor, past_key: torch.Tensor, past_value: torch.Tensor,
                     seqlens_k: torch.Tensor, total: torch.Tensor, n_head: int
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Reference semantics of the ORT op: (y (B, T, C), present_key, present_value).

    The caches are (B, nh, L, hs); the new T keys/values land at [total - T, total); query
    i (absolute position total - T + i) sees cache entries 0 .. total - T + i.  seqlens_k
    (B,) int32 is total - 1 for every sequence (ORT's per-sequence lengths; the graph
    computes it once for all layers)."""
    B, T, W = qkv.shape
    C = W // 3
    hs = C // n_head
    q, k, v = (t.reshape(B, T, n_head, hs).transpose(1, 2) for t in qkv.split(C, dim=2))
    end = int(total)
    start = end - T
    present_key, present_value = past_key.clone(), past_value.clone()
    present_key[:, :, start:end] = k
    present_value[:, :, start:end] = v
    pos = torch.arange(start, end, device=qkv.device)
    visible = torch.arange(end, device=qkv.device)[None, :] <= pos[:, None]
    att = (q @ present_key[:, :, :end].transpose(-2, -1)) * (1.0 / math.sqrt(hs))
    att = att.masked_fill(~visible, float("-inf")).softmax(dim=-1)
    y = (att @ present_value[:, :, :end]).transpose(1, 2).reshape(B, T, C)
    return y, present_key, present_value


@cached_attention.register_fake
def _(qkv, past_key, past_value, seqlens_k, total, n_head):
    B, T, W = qkv.shape
    return qkv.new_empty(B, T, W // 3), torch.empty_like(past_key), torch.empty_like(past_value)


def _gqa_schema():
    """The inputs/outputs/attributes of com.microsoft::GroupQueryAttention this graph uses
    (ORT registers the full schema in its own runtime, not in the onnx package)."""
    from onnx.defs import OpSchema

    fp, optional = OpSchema.FormalParameter, OpSchema.FormalParameterOption.Optional
    return OpSchema(
        "GroupQueryAttention", "com.microsoft", 1,
        inputs=[fp("query", "T"), fp("key", "T", param_option=optional),
                fp("value", "T", param_option=optional),
                fp("past_key", "T", param_option=optional),
                fp("past_value", "T", param_option=optional),
                fp("seqlens_k", "M"), fp("total_sequence_length", "M")],
        outputs=[fp("output", "T"), fp("present_key", "T"), fp("present_value", "T")],
        type_constraints=[("T", ["tensor(float)", "tensor(float16)", "tensor(bfloat16)"], ""),
                          ("M", ["tensor(int32)"], "")],
        attributes=[OpSchema.Attribute("num_heads", OpSchema.AttrType.INT, ""),
                    OpSchema.Attribute("kv_num_heads", OpSchema.AttrType.INT, "")])


def translation_table() -> dict:
    """`custom_translation_table` for torch.onnx.export: cached_attention -> one GQA node."""
    from onnxscript.values import Op, Opset

    gqa = Op(Opset("com.microsoft", 1), "GroupQueryAttention", _gqa_schema())

    def to_gqa(qkv, past_key, past_value, seqlens_k, total, n_head: int):
        return gqa(qkv, None, None, past_key, past_value, seqlens_k, total,
                   num_heads=n_head, kv_num_heads=n_head, _outputs=3)

    return {torch.ops.gpteval.cached_attention.default: to_gqa}


def seqlens_k(total: torch.Tensor, batch: int) -> torch.Tensor:
    """GQA's seqlens_k for a batch of equal-length sequences: (batch,) int32 of total - 1."""
    return (total - 1).to(torch.int32).expand(batch)
