"""What a pass is: a small config object with a name, an optional parameter, and
`apply(engine, ctx) -> engine`.  `available(device)` returns why the pass cannot run
here (missing package, needs CUDA) or None, so the harness records a skip with a reason
instead of crashing.

Pass modules import heavy libraries (onnxruntime, torchao, torch_tensorrt) inside
`apply`/`available`, never at module import time.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import torch

from gpteval.engine import Engine, TorchEngine
from gpteval.errors import UserError


class PassError(UserError):
    """A pass name, parameter or order the user wrote is wrong."""


class PassSkipped(Exception):
    """Raised from apply() when the pass cannot run on this model or machine for a reason
    only known once it runs (e.g. fine-tuning a model with random weights); the harness
    records the variant as skipped with this reason."""


@dataclass
class PassContext:
    """What a pass may need besides the engine it transforms."""

    device: str = "cpu"
    workdir: Path = field(default_factory=lambda: Path("."))  # artifacts (exported files) go here
    seed: int = 0
    # token ids of the training split, for calibration (Wanda) and recovery fine-tuning;
    # None where the model has no meaningful training data (random presets).
    train_ids: Callable[[], torch.Tensor] | None = None
    trained: bool = True
    # (batch, max_len) the engine will be measured at: compile-style passes warm up at
    # this shape so compilation lands inside optimize_s, not inside the timings
    warmup_shape: tuple[int, int] | None = None


class Pass:
    name: ClassVar[str] = ""
    summary: ClassVar[str] = ""  # one line for `gpteval passes`
    param: ClassVar[str | None] = None  # what the ':' parameter means, None if it takes none
    default: ClassVar[str | None] = None  # the parameter's default when omitted
    requires: ClassVar[tuple[str, ...]] = ("torch",)  # engine backends it accepts
    produces: ClassVar[str | None] = None  # backend it leaves behind (None: unchanged)
    # leaves quantized weights (tensor subclasses, torch.ao modules) in the model
    quantizes: ClassVar[bool] = False
    # needs plain float weights (an exporter, a float kernel): no quantizing pass may come
    # before it; `float_weights_fix` is what the error tells the user to do instead
    float_weights_only: ClassVar[bool] = False
    float_weights_fix: ClassVar[str] = "leave the quantizing pass out"
    # max |logit - eager logit| on the tiny test model; None: no parity expected (pruning)
    tolerance: ClassVar[float | None] = 0.0
    devices: ClassVar[tuple[str, ...]] = ("cpu", "cuda")

    def __init__(self, arg: str | None = None) -> None:
        self.arg = arg if arg is not None else self.default
        if self.param is None and arg is not None:
            raise PassError(f"pass '{self.name}' takes no parameter; write '{self.name}' "
                            f"instead of '{self.name}:{arg}'")
        self.parse(self.arg)

    def parse(self, arg: str | None) -> None:
        """Validate and store the parameter; raise PassError with the fix."""

    @property
    def spec(self) -> str:
        return self.name if self.arg is None or self.arg == self.default else f"{self.name}:{self.arg}"

    def available(self, device: str) -> str | None:
        kind = device.split(":")[0]
        if kind not in self.devices:
            return f"{self.name} runs on {' or '.join(self.devices)} only, not {kind}"
        if kind == "cuda" and not torch.cuda.is_available():
            return "needs CUDA: no GPU is visible to torch"
        return None

    def apply(self, engine: Engine, ctx: PassContext) -> Engine:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"<pass {self.spec}>"


def require_torch_engine(engine: Engine, pass_name: str) -> TorchEngine:
    if not isinstance(engine, TorchEngine):
        raise PassError(f"pass '{pass_name}' needs a PyTorch engine; put it before 'onnx' "
                        "or 'compile' in the pipeline")
    return engine


def missing_package(module: str, extra: str | None = None) -> str | None:
    """The skip reason when `module` cannot be imported, else None."""
    if importlib.util.find_spec(module) is None:
        hint = f"pip install 'gpteval[{extra}]'" if extra else f"pip install {module}"
        return f"{module} is not installed ({hint})"
    return None


def parse_fraction(name: str, arg: str | None, lo: float = 0.0, hi: float = 1.0) -> float:
    """A parameter in the open interval (lo, hi), e.g. a sparsity."""
    try:
        value = float(arg)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise PassError(f"'{name}:{arg}': the parameter must be a number between {lo} and "
                        f"{hi}, e.g. '{name}:0.5'") from None
    if not lo < value < hi:
        raise PassError(f"'{name}:{arg}': the parameter must be between {lo} and {hi} "
                        f"(exclusive), e.g. '{name}:0.5'")
    return value


def parse_int(name: str, arg: str | None, lo: int = 1, hi: int | None = None,
              choices: tuple[int, ...] | None = None) -> int:
    example = choices[0] if choices else lo
    try:
        value = int(arg)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise PassError(f"'{name}:{arg}': the parameter must be a whole number, "
                        f"e.g. '{name}:{example}'") from None
    if choices and value not in choices:
        raise PassError(f"'{name}:{arg}': choose one of {', '.join(map(str, choices))}")
    if value < lo or (hi is not None and value > hi):
        raise PassError(f"'{name}:{arg}': the parameter must be between {lo} and {hi}")
    return value


class Eager(Pass):
    name = "eager"
    summary = ("fp32 reference: the baseline every fidelity metric is measured against "
               "(inference layout: lm_head stored (in, out); on CPU oneDNN-packed weights)")
    requires = ("torch",)

    def apply(self, engine: Engine, ctx: PassContext) -> Engine:
        te = require_torch_engine(engine, self.name)
        te.model.transpose_lm_head_()
        te.notes.append(f"{self.name}: {HEAD_LAYOUT_NOTE}")
        return te


HEAD_LAYOUT_NOTE = ("lm_head stored (in, out), untied from the embedding, so decode's x @ W "
                    "streams rows (same logits, one more copy of the table)")


def pack_for_cpu(te: TorchEngine, who: str, drop_dense: bool,
                 head_as_is: bool = False) -> None:
    """Give a CPU TorchEngine's float32 projections their oneDNN-packed copies (the
    reference model's CPU inference layout, gpteval/packed.py) and say so in its notes.
    `drop_dense`: the packed copies replace the dense weights (eager inference only);
    otherwise they are held beside them.  `head_as_is`: a plain nn.Linear lm_head keeps
    its (V, C) weight, tied or not, and is packed too (GPT.packable_lm_head_)."""
    if not te.device.startswith("cpu") or te.dtype != torch.float32:
        return
    if head_as_is:
        te.model.packable_lm_head_()
    count, reason = te.model.pack_weights_(drop_dense=drop_dense)
    if count:
        held = ("in place of the dense weights" if drop_dense else
                f"beside the dense weights, +{te.model.packed_nbytes() / 2**20:.0f} MB")
        te.notes.append(f"{who}: {count} projection weights held oneDNN-packed for CPU "
                        f"inference ({held}; oneDNN's AVX-512/AVX2 kernels instead of MKL's; "
                        "logits move by rounding only, ~5e-6 on GPT-2)")
    elif reason:
        te.notes.append(f"{who}: weights not oneDNN-packed ({reason})")


def inference_layout(engine: Engine) -> Engine:
    """After a variant's passes: the inference layout `eager` is measured with, for every
    eager-mode TorchEngine, so a speed ratio against eager measures the pass, not a slower
    layout.  A still-tied float32 nn.Linear lm_head is stored (in, out) (TransposedHead);
    on CPU the float32 projections are held oneDNN-packed instead of dense (an engine
    that only runs eager inference needs no second copy).  Passes that replaced or
    quantized layers keep what they made (only plain float32 weights are packed); compiled
    engines are left as they are (Compile packs before it compiles, keeping the dense
    weights its graph reads)."""
    from torch import nn

    if not isinstance(engine, TorchEngine) or engine.backend != "torch":
        return engine
    head = engine.model.lm_head
    if (type(head) is nn.Linear and type(head.weight) is nn.Parameter
            and head.weight.dtype == torch.float32 and head.weight.layout == torch.strided):
        engine.model.transpose_lm_head_()
        engine.notes.append(f"layout: {HEAD_LAYOUT_NOTE}")
    pack_for_cpu(engine, "layout", drop_dense=True)
    return engine


class HFPeer(Pass):
    """Not an optimization: swaps in Hugging Face GPT2LMHeadModel with the same weights."""

    name = "hf"
    summary = "Hugging Face transformers GPT2LMHeadModel, same weights: the peer users run today"
    requires = ("torch",)
    produces = "hf"

    def available(self, device: str) -> str | None:
        return missing_package("transformers", "test") or super().available(device)

    def apply(self, engine: Engine, ctx: PassContext) -> Engine:
        from gpteval.engine import HFEngine

        te = require_torch_engine(engine, self.name)
        return HFEngine(te.model, te.device)
