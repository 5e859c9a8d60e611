"""Quantization passes: int8 / int4 / fp8 weights (and int8 activations) for the PyTorch engine.

gpteval's projections are GPT-2 `Conv1D` modules with the weight stored (in, out); the
quantizers (torch.ao `quantize_dynamic`, torchao `quantize_`, semi-structured sparsity)
all work on `nn.Linear` with the weight stored (out, in).  `linearize()` swaps every block
projection for a `Conv1DAsLinear` that holds such an `nn.Linear`, and unties `lm_head` from
the token embedding so the output projection (about a third of the bytes GPT-2 small reads
per token) is quantized too while the embedding lookup stays in floating point.

Which int8-dynamic implementation runs depends on the device, because they win in
different places: on CPU torch.ao's fbgemm kernels compute in int8 in eager mode, while
torchao's CPU path dequantizes per call and pays off only after `compile`; on CUDA torchao's
`Int8DynamicActivationInt8WeightConfig` is the maintained path.  torchao and
torch.ao.quantization are imported inside the passes only.
"""

from __future__ import annotations

import logging
import sys
from types import SimpleNamespace

import torch
from torch import nn

from gpteval.engine import Engine, TorchEngine
from gpteval.model import GPT, Conv1D

from .base import (
    Pass,
    PassContext,
    PassError,
    missing_package,
    parse_int,
    require_torch_engine,
)


class Conv1DAsLinear(nn.Module):
    """A block projection held as `nn.Linear` (weight (out, in)) in a Conv1D's place.

    The inner `linear` is what quantizers swap or re-weight.  `weight` answers only the
    shape question model.py asks of a projection (`c_attn.weight.shape[1]`, Conv1D's
    (in, out) layout); it holds no data and is not a parameter, so byte counts stay true.
    """

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        self.linear = linear
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self._layout = SimpleNamespace(shape=torch.Size((self.in_features, self.out_features)))

    @property
    def weight(self) -> SimpleNamespace:
        return self._layout

    @classmethod
    def from_conv1d(cls, conv: Conv1D) -> Conv1DAsLinear:
        w = conv.weight.detach()  # (in, out)
        linear = nn.Linear(w.shape[0], w.shape[1], bias=conv.bias is not None,
                           device=w.device, dtype=w.dtype)
        with torch.no_grad():
            linear.weight.copy_(w.t())  # (out, in)
            if conv.bias is not None:
                linear.bias.copy_(conv.bias.detach())
        return cls(linear)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x)


def block_projections(model: GPT):
    """(qualified name, parent module, attribute) of every projection in the blocks."""
    for i, block in enumerate(model.transformer.h):
        for parent_name, parent in (("attn", block.attn), ("mlp", block.mlp)):
            for attr in (("c_attn", "c_proj") if parent_name == "attn" else ("c_fc", "c_proj")):
                yield f"h.{i}.{parent_name}.{attr}", parent, attr


def linearize(model: GPT, untie_lm_head: bool = True) -> int:
    """Swap Conv1D block projections for `Conv1DAsLinear`; optionally untie lm_head.

    Idempotent.  Returns how many projections were converted by this call."""
    converted = 0
    for _, parent, attr in block_projections(model):
        module = getattr(parent, attr)
        if isinstance(module, Conv1D):
            setattr(parent, attr, Conv1DAsLinear.from_conv1d(module))
            converted += 1
    if untie_lm_head and model.lm_head.weight is model.transformer.wte.weight:
        model.lm_head.weight = nn.Parameter(model.transformer.wte.weight.detach().clone())
    return converted


def is_plain(t: torch.Tensor) -> bool:
    """True for an ordinary dense tensor; False for quantized/sparse tensor subclasses."""
    return (type(t) in (torch.Tensor, nn.Parameter) and not t.is_quantized
            and t.layout == torch.strided)


def model_linears(model: GPT) -> list[nn.Linear]:
    return [m for m in model.modules() if isinstance(m, nn.Linear)]


def require_float_weights(te: TorchEngine, pass_name: str) -> None:
    """Quantizing twice, or after a sparse conversion, is an ordering mistake."""
    for m in te.model.modules():
        packed = hasattr(m, "_packed_params")  # torch.ao quantized modules
        if packed or any(not is_plain(p) for p in m.parameters(recurse=False)):
            raise PassError(f"pass '{pass_name}' needs floating-point weights but the model is "
                            "already quantized or sparse; apply one quantization pass, last "
                            "among the PyTorch passes")


def torchao_missing() -> str | None:
    """The skip reason when torchao is not installed; when it is, imports it (quietly,
    below), so every torchao pass meets it here first: `available` runs before `apply`."""
    reason = missing_package("torchao", "torchao")
    if reason is None:
        _import_torchao_quietly()
    return reason


def _import_torchao_quietly() -> None:
    """torchao's import logs a line for each optional native library it cannot load (its
    CUDA-only builds, on a CPU machine) and makes torch warn that an Enum it registers
    needs no registering: noise a user cannot act on, which `gpteval passes` printed above
    its table.  Imported once with those two loggers at ERROR; real errors still show."""
    if "torchao" in sys.modules:
        return
    loggers = [logging.getLogger(name) for name in ("torchao", "torch.utils._pytree")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        import torchao  # noqa: F401
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def quantize_with_torchao(model: GPT, config, filter_fn=None) -> tuple[int, int]:
    """torchao `quantize_` on every nn.Linear (or those `filter_fn(module, fqn)` accepts);
    returns (quantized, left in float).

    torchao skips layers whose shapes its kernels cannot take (it only logs that), so the
    count is read back from the weights."""
    from torchao.quantization import quantize_

    if filter_fn is None:
        quantize_(model, config)  # torchao's default filter: every nn.Linear
    else:
        quantize_(model, config, filter_fn=filter_fn)
    linears = model_linears(model)
    quantized = sum(not is_plain(m.weight) for m in linears)
    return quantized, len(linears) - quantized


class Int8Dynamic(Pass):
    name = "int8-dynamic"
    quantizes = True
    summary = ("int8 weights, activations quantized per call: torch.ao quantize_dynamic on CPU, "
               "torchao Int8DynamicActivationInt8Weight on CUDA")
    tolerance = 0.03  # measured 1.0e-2 (torch.ao, CPU)

    def available(self, device: str) -> str | None:
        if device.startswith("cuda"):
            return torchao_missing() or super().available(device)
        return super().available(device)

    def apply(self, engine: Engine, ctx: PassContext) -> Engine:
        te = require_torch_engine(engine, self.name)
        require_float_weights(te, self.name)
        on_cuda = te.device.startswith("cuda")
        if not on_cuda and te.dtype != torch.float32:
            raise PassError("int8-dynamic on CPU quantizes an fp32 model (torch.ao kernels take "
                            "fp32 activations); remove 'fp16'/'bf16' from this variant")
        model = te.model
        linearize(model)
        if on_cuda:
            from torchao.quantization import Int8DynamicActivationInt8WeightConfig

            done, left = quantize_with_torchao(model, Int8DynamicActivationInt8WeightConfig())
            te.notes.append(f"int8-dynamic: torchao Int8DynamicActivationInt8WeightConfig "
                            f"(per-token int8 activations, per-channel int8 weights) on {done} "
                            f"linear layers incl. lm_head (untied from wte){_left(left)}; "
                            "torchao's int8 kernels are fast only after 'compile'")
            return te
        from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

        n = len(model_linears(model))
        quantize_dynamic(model, {nn.Linear: per_channel_dynamic_qconfig}, dtype=torch.qint8,
                         inplace=True)
        kernels = torch.backends.quantized.engine
        te.notes.append(f"int8-dynamic: torch.ao quantize_dynamic ({kernels} kernels, "
                        f"per-channel int8 weights, per-call int8 activations) on {n} "
                        "linear layers incl. lm_head (untied from wte; the embedding stays fp32)")
        return te


def _left(left: int) -> str:
    if not left:
        return ""
    return f"; {left} layer(s) left in floating point (shapes the kernels cannot take)"


class Int8WeightOnly(Pass):
    name = "int8-weight-only"
    quantizes = True
    summary = "int8 per-channel weights, floating-point activations (torchao Int8WeightOnlyConfig)"
    tolerance = 0.01  # measured 3.4e-3

    def available(self, device: str) -> str | None:
        return torchao_missing() or super().available(device)

    def apply(self, engine: Engine, ctx: PassContext) -> Engine:
        from torchao.quantization import Int8WeightOnlyConfig

        te = require_torch_engine(engine, self.name)
        require_float_weights(te, self.name)
        linearize(te.model)
        done, left = quantize_with_torchao(te.model, Int8WeightOnlyConfig())
        te.notes.append(f"int8-weight-only: torchao Int8WeightOnlyConfig on {done} linear layers "
                        f"incl. lm_head (untied from wte){_left(left)}; weights are dequantized "
                        "per call in eager mode, fused only under 'compile'")
        return te


INT4_GROUP_SIZES = (32, 64, 128, 256)


class Int4WeightOnly(Pass):
    name = "int4-weight-only"
    quantizes = True
    summary = "int4 grouped weights, bf16 activations (torchao Int4WeightOnlyConfig)"
    param = "group size: weights share one scale per this many inputs (32, 64, 128, 256)"
    default = "128"
    tolerance = 0.15  # not measured here (no CPU kernel): ~16x int8's step

    _probe: dict[str, str | None] = {}  # "device:group" -> reason, one probe per process

    def parse(self, arg: str | None) -> None:
        self.group_size = parse_int(self.name, arg, choices=INT4_GROUP_SIZES)

    def config(self, device: str):
        from torchao.quantization import Int4WeightOnlyConfig

        if device.startswith("cuda"):
            # tinygemm's tile-packed layout needs only torch's own CUDA kernels
            from torchao.quantization.quantize_.workflows import Int4PackingFormat

            return Int4WeightOnlyConfig(group_size=self.group_size,
                                        int4_packing_format=Int4PackingFormat.TILE_PACKED_TO_4D)
        return Int4WeightOnlyConfig(group_size=self.group_size)

    def available(self, device: str) -> str | None:
        reason = torchao_missing() or super().available(device)
        if reason is None and not device.startswith("cuda"):
            reason = self._probe_device(device)
        return reason

    def _probe_device(self, device: str) -> str | None:
        """Quantize one small layer: torchao's int4 kernels exist for some devices only, and
        the error it raises is the honest reason."""
        key = f"{device}:{self.group_size}"
        if key not in self._probe:
            import torchao

            layer = nn.Linear(256, 64, dtype=torch.bfloat16, device=device)
            try:
                quantize_with_torchao(layer, self.config(device))
                layer(torch.zeros(1, 256, dtype=torch.bfloat16, device=device))
                self._probe[key] = None
            except Exception as e:  # the library's own words are the reason
                self._probe[key] = (f"torchao {torchao.__version__} has no int4 weight-only "
                                    f"kernel for {device}: Int4WeightOnlyConfig raised "
                                    f"{type(e).__name__}: {e}")
        return self._probe[key]

    def apply(self, engine: Engine, ctx: PassContext) -> Engine:
        te = require_torch_engine(engine, self.name)
        require_float_weights(te, self.name)
        linearize(te.model)
        te.model.to(torch.bfloat16)  # int4 kernels take bf16 activations
        done, left = quantize_with_torchao(te.model, self.config(te.device))
        if done == 0:
            raise PassError(f"'{self.spec}': no linear layer has an input width divisible by "
                            f"{self.group_size}; choose a smaller group size, e.g. "
                            f"'{self.name}:32'")
        te.notes.append(f"int4-weight-only: torchao Int4WeightOnlyConfig(group_size="
                        f"{self.group_size}) on {done} linear layers incl. lm_head (untied), "
                        f"model cast to bf16{_left(left)}")
        return te


def fp8_shape_ok(module: nn.Module, fqn: str = "") -> bool:
    """cuBLASLt's float8 matmul (torch._scaled_mm) takes only dimensions divisible by 16;
    GPT-2's lm_head has 50,257 outputs and stays in bf16 (measured on an H200: quantizing
    it fails with CUBLAS_STATUS_NOT_SUPPORTED)."""
    return (isinstance(module, nn.Linear) and module.in_features % 16 == 0
            and module.out_features % 16 == 0)


class FP8(Pass):
    name = "fp8"
    quantizes = True
    summary = ("float8 e4m3 weights and per-call activations, per-row scales (torchao); "
               "CUDA compute capability >= 8.9")
    tolerance = 0.2  # not measured here (needs sm_89+): 3-bit mantissa
    devices = ("cuda",)

    def available(self, device: str) -> str | None:
        if not device.startswith("cuda"):
            return (f"fp8 matmuls need an NVIDIA GPU of compute capability >= 8.9 (Ada, "
                    f"Hopper); torchao has no float8 kernels for {device}")
        reason = torchao_missing() or super().available(device)
        if reason is None:
            major, minor = torch.cuda.get_device_capability(torch.device(device))
            if (major, minor) < (8, 9):
                reason = (f"fp8 matmuls need CUDA compute capability >= 8.9 (Ada, Hopper); "
                          f"this GPU is {major}.{minor}")
        return reason

    def apply(self, engine: Engine, ctx: PassContext) -> Engine:
        from torchao.quantization import (
            Float8DynamicActivationFloat8WeightConfig,
            PerRow,
        )

        te = require_torch_engine(engine, self.name)
        require_float_weights(te, self.name)
        linearize(te.model)
        te.model.to(torch.bfloat16)  # per-row float8 scaling takes bf16 weights
        done, left = quantize_with_torchao(
            te.model, Float8DynamicActivationFloat8WeightConfig(granularity=PerRow()),
            filter_fn=fp8_shape_ok)
        te.notes.append(f"fp8: torchao Float8DynamicActivationFloat8WeightConfig(PerRow) on "
                        f"{done} linear layers incl. lm_head (untied), model cast to "
                        f"bf16{_left(left)}")
        return te
