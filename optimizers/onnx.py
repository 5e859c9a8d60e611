"""ONNX export and ONNX Runtime: `onnx`, `ort-int8`, `ort-int4`.

`onnx` exports one *decode step* of gpteval's GPT with the dynamo exporter
(`torch.onnx.export(dynamo=True)`): inputs are the new token ids (B, T), the past
keys/values of every layer (B, nh, past_len, hs) and `logits_positions` (K,), which of the
T positions get logits (the last for generation, all for teacher-forced quality); outputs
are the logits (B, K, V) and the present keys/values (B, nh, past_len + T, hs).  B, T, K
and past_len are dynamic, so one graph serves prefill (zero-length past) and decode
(T = 1).  Positions are taken from past_len, so there is no position input to get wrong.
The CPU export holds the cache in fixed-length buffers instead (see `DecodeStep`).

The lm_head is exported *untied* from the token embedding, as its own (C, V) MatMul weight:
a tied weight defeated ORT int8 in the project's measurement on GPT-2 124M (no gain tied,
~117 tok/s untied).

`ort-int8` (quantize_dynamic, int8 weights) and `ort-int4` (MatMulNBits, 4-bit blocks)
rewrite the exported file into a new one next to it.  onnx, onnxruntime and onnxscript are
imported inside functions only.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import math
import time
import warnings
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from gpteval.engine import Engine
from gpteval.model import GPT

from .base import (
    Pass,
    PassContext,
    PassError,
    missing_package,
    parse_int,
    require_torch_engine,
)
from .onnx_attention import TOTAL_INPUT, seqlens_k, translation_table
from .ort_engine import POSITIONS_INPUT, OrtEngine

MODEL_FILE = "model.onnx"
EXTRA = "onnx"  # pip install 'gpteval[onnx]'


# ---- the exported graph: one decode step with an explicit past ------------------------------
class DecodeStep(nn.Module):
    """GPT forward over new tokens given the past keys/values of every layer.

    Reuses the model's modules (wte, wpe, blocks, ln_f); projections are written as
    `x @ W + b` with W (in, out) so every weight is the constant B input of a MatMul, the
    form ORT's quantizers rewrite.  The causal mask lets query i (absolute position
    past_len + i) see keys 0 .. past_len + i, which is right for T = 1 and for T > 1 with a
    past alike.

    With `static_cache` (the CPU export) each cache is instead a fixed-length buffer that
    ORT's GroupQueryAttention updates in place, and the extra scalar input `total` (int32:
    cached tokens after this call) gives the positions: see `onnx_attention`.
    `logits_positions` (K,) picks the new positions whose logits are computed.
    """

    def __init__(self, model: GPT, static_cache: bool = False) -> None:
        super().__init__()
        self.transformer = model.transformer
        self.static_cache = static_cache
        # untied copy, stored (C, V): see the module docstring
        self.register_buffer("lm_head_weight", model.lm_head.weight.detach().t().contiguous())

    def forward(self, input_ids: torch.Tensor, past: tuple[torch.Tensor, ...],
                logits_positions: torch.Tensor, total: torch.Tensor | None = None):
        tr = self.transformer
        B, T = input_ids.shape
        if self.static_cache:  # caches are fixed-length buffers; `total` = tokens after this call
            pos = (total - T).long() + torch.arange(T, device=input_ids.device)
            last = seqlens_k(total, B)
        else:  # caches hold exactly the past
            P = past[0].shape[2]
            pos = torch.arange(P, P + T, device=input_ids.device)  # (T,) absolute positions
            visible = torch.arange(P + T, device=input_ids.device)[None, :] <= pos[:, None]
        # activations stay 2-D, (B*T, C), between attentions: a 2-D MatMul + bias Add is what
        # ORT fuses into one Gemm (measured 3.5 % faster fp32 decode for gpt2, same logits);
        # with (B, T, C) every bias stayed a separate Add node
        x = (tr.wte(input_ids) + tr.wpe(pos)).reshape(B * T, -1)
        presents: list[torch.Tensor] = []
        for i, block in enumerate(tr.h):
            attn = block.attn
            qkv = _affine(block.ln_1(x), attn.c_attn).view(B, T, -1)  # pruning may shrink it
            if self.static_cache:
                y, k, v = torch.ops.gpteval.cached_attention(qkv, past[2 * i], past[2 * i + 1],
                                                             last, total, attn.n_head)
            else:
                y, k, v = _concat_attention(qkv, past[2 * i], past[2 * i + 1], visible,
                                            attn.n_head)
            presents += [k, v]
            x = x + _affine(y.reshape(B * T, -1), attn.c_proj)
            mlp = block.mlp
            h = F.gelu(_affine(block.ln_2(x), mlp.c_fc), approximate="tanh")  # GPT-2's gelu_new
            x = x + _affine(h, mlp.c_proj)
        # (K,) positions among the T new tokens whose logits are wanted: the last one for
        # prefill and decode, all of them for teacher-forced quality
        x = x.view(B, T, -1).index_select(1, logits_positions)
        logits = tr.ln_f(x) @ self.lm_head_weight  # (B, K, V)
        return (logits, *presents)


def _concat_attention(qkv: torch.Tensor, past_key: torch.Tensor, past_value: torch.Tensor,
                      visible: torch.Tensor, nh: int):
    """Causal attention of T new tokens after a past of P: (y (B, T, width), present_key,
    present_value), the presents being the past with the new keys/values appended."""
    B, T, W = qkv.shape
    width = W // 3
    hs = width // nh
    q, k, v = (t.view(B, T, nh, hs).transpose(1, 2) for t in qkv.split(width, dim=2))
    k = torch.cat([past_key, k], dim=2)  # (B, nh, P+T, hs)
    v = torch.cat([past_value, v], dim=2)
    att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(hs))  # (B, nh, T, P+T)
    att = att.masked_fill(~visible, float("-inf")).softmax(dim=-1)
    y = (att @ v).transpose(1, 2).reshape(B, T, width)  # (B, T, nh*hs)
    return y, k, v


def _affine(x: torch.Tensor, conv) -> torch.Tensor:
    y = x @ conv.weight
    return y if conv.bias is None else y + conv.bias


def kv_names(n_layer: int, prefix: str) -> list[str]:
    return [f"{prefix}_{kv}_{i}" for i in range(n_layer) for kv in ("key", "value")]


@contextlib.contextmanager
def _quiet():
    """Silence the exporter's and quantizers' chatter (axis renames, optional torchvision
    ops, "consider pre-processing"); errors still raise."""
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logging.disable(previous)


def _exportable(model: GPT) -> GPT:
    """The model in float32 with plain tensor weights, or a PassError that says what to do."""
    for name, p in model.named_parameters():
        if type(p) not in (nn.Parameter, torch.Tensor) or not p.is_floating_point():
            raise PassError(f"'onnx' exports plain float weights, but {name} is "
                            f"{type(p).__name__} {p.dtype}; quantize after the export instead, "
                            "e.g. 'onnx+ort-int8'")
    for name, m in model.named_modules():
        if hasattr(m, "_packed_params"):
            raise PassError(f"'onnx' cannot export the torch-quantized module {name}; quantize "
                            "after the export instead, e.g. 'onnx+ort-int8'")
    if model.transformer.wte.weight.dtype != torch.float32:
        model = copy.deepcopy(model).float()  # ORT's CPU kernels are float32
    return model


def export_decode_step(model: GPT, path: Path, static_cache: bool = False) -> dict:
    """Write the decode-step graph to `path` (+ `path`.data); returns what the notes need."""
    model = model.eval()
    cfg = model.config
    device = model.transformer.wte.weight.device
    step = DecodeStep(model, static_cache).eval()
    n_layer = len(model.transformer.h)
    # example sizes distinct from each other and from 0/1, which torch.export specializes;
    # a static cache holds the past and the new tokens: 7 + 5 of its 13 entries
    B, T, P = 3, 5, 7
    ids = torch.zeros(B, T, dtype=torch.long, device=device)  # values do not matter
    past = []
    for block in model.transformer.h:
        nh = block.attn.n_head
        hs = block.attn.c_attn.weight.shape[1] // 3 // nh
        past += [torch.zeros(B, nh, P + T + 1 if static_cache else P, hs, device=device)
                 for _ in range(2)]
    batch = torch.export.Dim("batch", min=1, max=4096)
    seq = torch.export.Dim("seq", min=1, max=cfg.n_positions)
    cache_len = torch.export.Dim("cache_len" if static_cache else "past_len",
                                 min=1 if static_cache else 0, max=cfg.n_positions)
    dynamic_shapes = [{0: batch, 1: seq}, tuple({0: batch, 2: cache_len} for _ in past)]
    keep = torch.export.Dim("keep", min=1, max=cfg.n_positions)
    dynamic_shapes.append({0: keep})
    args: tuple = (ids, tuple(past), torch.arange(1, T, device=device))  # K = 4 of T = 5
    names = ["input_ids"] + kv_names(n_layer, "past") + [POSITIONS_INPUT]
    extra = {}
    if static_cache:
        args += (torch.tensor(P + T, dtype=torch.int32, device=device),)
        dynamic_shapes.append(None)  # a scalar
        names.append(TOTAL_INPUT)
        extra["custom_translation_table"] = translation_table()
    path.parent.mkdir(parents=True, exist_ok=True)
    with _quiet(), torch.no_grad():
        program = torch.onnx.export(
            step, args, str(path), dynamo=True, external_data=True,
            dynamic_shapes=tuple(dynamic_shapes), verbose=False, input_names=names,
            output_names=["logits"] + kv_names(n_layer, "present"), **extra)
    opset = program.model.opset_imports.get("", None) if program is not None else None
    return {"opset": opset}


def _ort_available(device: str, need_exporter: bool) -> str | None:
    for module in ("onnx", "onnxruntime") + (("onnxscript",) if need_exporter else ()):
        reason = missing_package(module, EXTRA)
        if reason:
            return reason
    if device.split(":")[0] == "cuda":
        import onnxruntime as ort

        if "CUDAExecutionProvider" not in ort.get_available_providers():
            return ("onnxruntime has no CUDAExecutionProvider here (pip install "
                    "onnxruntime-gpu in place of onnxruntime)")
    return None


def _require_ort_engine(engine: Engine, name: str) -> OrtEngine:
    if not isinstance(engine, OrtEngine):
        raise PassError(f"'{name}' works on an exported ONNX model; put 'onnx' before it, "
                        f"e.g. 'onnx+{name}'")
    return engine


def _rebuilt(src: OrtEngine, path: Path, dtype: str, quantize_s: float, note: str) -> OrtEngine:
    """A new engine on the rewritten file, carrying the source engine's notes forward."""
    out = OrtEngine(path, src.device, src.vocab_size, src.max_positions, dtype, src.notes + [note])
    out.optimize_notes = {**getattr(src, "optimize_notes", {}), "quantize_s": quantize_s,
                          "session_s": out.session_s}
    return out


# ---- the passes -----------------------------------------------------------------------------
class OnnxExport(Pass):
    name = "onnx"
    summary = "export a decode step (dynamo exporter, KV cache as graph inputs) to ONNX Runtime"
    requires = ("torch",)
    produces = "onnx"
    float_weights_only = True  # the exporter and ORT's quantizers need plain float weights
    float_weights_fix = "quantize after the export instead, e.g. 'onnx+ort-int8'"
    tolerance = 1e-4

    def available(self, device: str) -> str | None:
        return super().available(device) or _ort_available(device, need_exporter=True)

    def apply(self, engine: Engine, ctx: PassContext) -> Engine:
        te = require_torch_engine(engine, self.name)
        model = _exportable(te.model)
        path = Path(ctx.workdir) / MODEL_FILE
        t0 = time.perf_counter()
        # ORT's CUDA GroupQueryAttention takes fp16/bf16 only; this graph is float32
        static_cache = not te.device.startswith("cuda")
        info = export_decode_step(model, path, static_cache)
        export_s = time.perf_counter() - t0
        cache = ("KV cache: fixed-length buffers updated in place by ORT GroupQueryAttention"
                 if static_cache else "KV cache: past keys/values in, grown by Concat")
        notes = list(te.notes) + [
            f"torch.onnx.export dynamo=True, opset {info['opset']}, torch {torch.__version__}",
            f"lm_head untied from wte; {cache}"]
        if model is not te.model:
            notes.append(f"weights upcast from {te.model.transformer.wte.weight.dtype} to float32")
        out = OrtEngine(path, te.device, te.vocab_size, te.max_positions, "float32", notes)
        out.optimize_notes = {"export_s": export_s, "session_s": out.session_s}
        return out


class OrtInt8(Pass):
    name = "ort-int8"
    summary = "ONNX Runtime dynamic quantization: int8 weights, activations quantized per call"
    requires = ("onnx",)
    produces = "onnx"
    tolerance = 0.1  # measured 0.014 (vocab 256, C 64) and 0.073 (vocab 101, C 32) tiny models
    devices = ("cpu",)  # DynamicQuantizeMatMul / MatMulInteger are CPU kernels

    def available(self, device: str) -> str | None:
        return super().available(device) or _ort_available(device, need_exporter=False)

    def apply(self, engine: Engine, ctx: PassContext) -> Engine:
        from onnxruntime.quantization import QuantType, quantize_dynamic

        src = _require_ort_engine(engine, self.name)
        out_path = src.model_path.with_name(src.model_path.stem + ".int8.onnx")
        t0 = time.perf_counter()
        with _quiet():
            # MatMuls with a constant weight (not q@k, att@v) and the embedding Gather.
            # Per-tensor scales: ORT forces 7-bit weights (reduce_range) on per-channel
            # MatMul, measured 1.6-12x the max logit error of per-tensor (tiny models, GPT-2 124M).
            quantize_dynamic(src.model_path, out_path, weight_type=QuantType.QInt8,
                             per_channel=False, use_external_data_format=True,
                             extra_options={"MatMulConstBOnly": True})
        return _rebuilt(src, out_path, "int8 weights", time.perf_counter() - t0,
                        "ort-int8: quantize_dynamic int8 weights (per-tensor scales, embedding "
                        "too), uint8 activations quantized at run time")


class OrtInt4(Pass):
    name = "ort-int4"
    summary = "ONNX Runtime MatMulNBits: 4-bit block-quantized MatMul weights (accuracy level 4)"
    param = "block size (16, 32, 64 or 128 weights per scale)"
    default = "32"
    requires = ("onnx",)
    produces = "onnx"
    tolerance = 0.5  # measured 0.083 (vocab 256, C 64) and 0.039 (vocab 101, C 32), block 32

    BLOCK_SIZES = (16, 32, 64, 128)

    def parse(self, arg: str | None) -> None:
        self.block_size = parse_int(self.name, arg, lo=16, hi=128, choices=self.BLOCK_SIZES)

    def available(self, device: str) -> str | None:
        return super().available(device) or _ort_available(device, need_exporter=False)

    def apply(self, engine: Engine, ctx: PassContext) -> Engine:
        import onnx
        from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

        src = _require_ort_engine(engine, self.name)
        out_path = src.model_path.with_name(f"{src.model_path.stem}.int4-b{self.block_size}.onnx")
        t0 = time.perf_counter()
        with _quiet():
            # asymmetric (a zero point per block): measured lower KL than symmetric on GPT-2
            # 124M.  accuracy_level 4 = int8 activations inside MatMulNBits; without it
            # (fp32 compute) 4-bit decode measured 2x slower on CPU.  The embedding Gather
            # stays float32 (ORT's default op set; decode reads one row of it per token).
            quantizer = MatMulNBitsQuantizer(onnx.load(str(src.model_path)), bits=4,
                                             block_size=self.block_size, is_symmetric=False,
                                             accuracy_level=4)
            quantizer.process()
            quantizer.model.save_model_to_file(str(out_path), use_external_data_format=True)
        return _rebuilt(src, out_path, "int4 weights", time.perf_counter() - t0,
                        f"ort-int4: MatMulNBits 4-bit asymmetric, block {self.block_size}, "
                        "accuracy level 4; embedding float32")
