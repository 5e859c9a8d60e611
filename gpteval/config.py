"""Study configuration: TOML validated with pydantic.

Errors name the key, the line where it stands, and the allowed values; unknown keys are
errors with a "did you mean".  `resolve()` merges command-line overrides into the file's
values, and the resolved config is saved in every results.json.
"""

from __future__ import annotations

import re
from importlib import resources
from pathlib import Path
from typing import Literal

import tomllib
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from .errors import UserError, did_you_mean

DEFAULT_VARIANTS = ["eager", "bf16", "int8-dynamic", "prune-structured:0.3", "onnx",
                    "onnx+ort-int8", "compile:max-autotune", "fused-decode", "fused-decode:int8"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


def as_batches(value) -> list[int]:
    """latency.batch as a list: `8` -> [8], `[1, 8]` -> [1, 8] (the first is the primary one)."""
    return [int(b) for b in value] if isinstance(value, (list, tuple)) else [int(value)]


class LatencyConfig(_Strict):
    batch: int | list[int] = Field(1, description="sequences decoded together; a list measures "
                                   "each size, the first one is the primary (main table, fidelity)")
    prompt_len: int = Field(128, ge=1, description="prompt tokens (prefill length)")
    new_tokens: int = Field(64, ge=2, description="tokens generated; tpot needs at least 2")
    warmup: int = Field(1, ge=0)
    min_repeats: int = Field(3, ge=1, description="minimum timed repeats")
    min_time_s: float = Field(1.0, ge=0.0, description="minimum total timed seconds")
    rounds: int = Field(1, ge=1, le=20, description="interleaved rounds: the protocol above is "
                        "run this many times per variant, visiting every variant of a model in "
                        "turn, and the samples are pooled, so that host load that drifts over "
                        "the run reaches all variants alike (each variant stays loaded meanwhile)")

    @field_validator("batch", mode="before")
    @classmethod
    def _batch(cls, value):
        def bad(v) -> bool:
            return isinstance(v, bool) or not isinstance(v, int)
        if isinstance(value, list):
            if not value:
                raise ValueError("is an empty list; give one batch size or a list such as [1, 8]")
            seen = set()
            for v in value:
                if bad(v):
                    raise ValueError(f"lists {v!r}, not an integer; use whole numbers ≥ 1 such as [1, 8]")
                if v < 1:
                    raise ValueError(f"lists {v}; every batch size must be ≥ 1")
                if v in seen:
                    raise ValueError(f"lists {v} twice; keep one")
                seen.add(v)
            return value
        if bad(value):
            raise ValueError(f"must be an integer ≥ 1 or a list of them such as [1, 8] (got {value!r})")
        if value < 1:
            raise ValueError(f"must be ≥ 1 (got {value}); use 1 or more sequences")
        return value

    @property
    def batches(self) -> list[int]:
        """Every batch size to measure, the primary one first."""
        return as_batches(self.batch)


class QualityConfig(_Strict):
    text: str = Field("bundled:test", description="'bundled:test' or a UTF-8 text file")
    context: int = Field(256, ge=2, description="perplexity window, tokens")
    stride: int = Field(128, ge=1, description="window advance, tokens")
    max_tokens: int = Field(0, ge=0, description="score at most this many tokens (0: all)")
    tasks: list[str] = Field(default_factory=lambda: ["bundled:cloze"])
    task_items: int = Field(0, ge=0, description="score at most this many items per task (0: all)")
    fidelity_tokens: int = Field(1024, ge=2, description="tokens compared with eager")
    generate_tokens: int = Field(32, ge=1, description="greedy tokens for first divergence "
                                 "(at most latency.new_tokens)")

    @model_validator(mode="after")
    def _stride_within_context(self):
        if self.stride > self.context:
            raise ValueError(f"quality.stride ({self.stride}) must not exceed quality.context "
                             f"({self.context}); lower stride or raise context")
        return self


class BudgetConfig(_Strict):
    ppl_pct: float = Field(2.0, ge=0.0, description="allowed perplexity rise over eager, %")
    top1_min: float = Field(0.95, ge=0.0, le=1.0, description="minimum top-1 agreement")


class RunConfig(_Strict):
    name: str = "default"
    models: list[str] = Field(default_factory=lambda: ["bundled"])
    variants: list[str] = Field(default_factory=lambda: list(DEFAULT_VARIANTS))
    devices: list[Literal["cpu", "cuda"]] = Field(default_factory=lambda: ["cpu"])
    threads: int = Field(0, ge=0, description="torch threads per variant (0: torch's default)")
    seed: int = 0
    timeout_s: float = Field(900.0, gt=0, description="per-variant time limit, seconds")
    latency: LatencyConfig = Field(default_factory=LatencyConfig)
    quality: QualityConfig = Field(default_factory=QualityConfig)
    budget: BudgetConfig = Field(default_factory=BudgetConfig)

    @field_validator("models", "variants", "devices")
    @classmethod
    def _non_empty_unique(cls, value: list, info):
        if not value:
            raise ValueError(f"{info.field_name} is empty; list at least one")
        seen = set()
        for v in value:
            key = v.strip() if isinstance(v, str) else v
            if key in seen:
                raise ValueError(f"{info.field_name} lists {v!r} twice; keep one")
            seen.add(key)
        return value

    @field_validator("name")
    @classmethod
    def _safe_name(cls, value: str):
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", value):
            raise ValueError("name may use letters, digits, '.', '_' and '-' only")
        return value


def _line_of(text: str, key: str) -> int | None:
    for i, line in enumerate(text.splitlines(), 1):
        if re.match(rf"\s*{re.escape(key)}\s*=", line) or line.strip() == f"[{key}]":
            return i
    return None


def _fields_at(loc: tuple) -> list[str]:
    model: type[BaseModel] = RunConfig
    for part in loc[:-1]:
        field = model.model_fields.get(str(part))
        ann = getattr(field, "annotation", None)
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            model = ann
    return list(model.model_fields)


def validation_message(err: ValidationError, where: str, text: str = "") -> str:
    e = err.errors()[0]
    loc = tuple(p for p in e["loc"] if not isinstance(p, int))
    key = ".".join(str(p) for p in loc) or "config"
    line = _line_of(text, str(loc[-1])) if loc and text else None
    at = f"{where}, line {line}" if line else where
    if e["type"] == "extra_forbidden":
        hint = did_you_mean(str(loc[-1]), _fields_at(loc))
        return f"{at}: unknown key '{key}'.{hint} Allowed here: {', '.join(_fields_at(loc))}"
    msg = e["msg"].removeprefix("Value error, ")
    if e["type"] == "literal_error":
        msg = f"{msg} (got {e.get('input')!r})"
    return f"{at}: {key}: {msg}"


def load_config(path: str | Path) -> tuple[RunConfig, str]:
    """Read and validate a TOML study; returns the config and its text."""
    p = Path(path)
    if p.is_dir():
        raise UserError(f"{p} is a directory; pass a TOML study file (see configs/)")
    if not p.is_file():
        raise UserError(f"{p}: no such config file; pass an existing TOML file (see configs/)")
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"{p}: cannot read the config ({e}); save it as UTF-8 text") from None
    return parse_config(text, str(p)), text


def parse_config(text: str, where: str = "<config>") -> RunConfig:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise UserError(f"{where}: TOML syntax error: {e}; fix the line it names") from None
    try:
        return RunConfig.model_validate(data)
    except ValidationError as e:
        raise UserError(validation_message(e, where, text)) from None


def default_config_text() -> str:
    return resources.files("gpteval.data").joinpath("default.toml").read_text(encoding="utf-8")


def default_config() -> RunConfig:
    return parse_config(default_config_text(), "the embedded default study")


def apply_overrides(cfg: RunConfig, **flags) -> RunConfig:
    """Command-line flags override the config file; None means 'not given'."""
    data = cfg.model_dump()
    if flags.get("model") is not None:
        data["models"] = [flags["model"]]
    if flags.get("variants") is not None:
        data["variants"] = [v.strip() for v in flags["variants"].split(",") if v.strip()]
    if flags.get("device") is not None:
        data["devices"] = ["cpu", "cuda"] if flags["device"] == "all" else [flags["device"]]
    if flags.get("text") is not None:
        data["quality"]["text"] = flags["text"]
    if flags.get("tasks") is not None:
        data["quality"]["tasks"] = list(flags["tasks"])
    if flags.get("name") is not None:
        data["name"] = flags["name"]
    if flags.get("timeout") is not None:
        data["timeout_s"] = flags["timeout"]
    if flags.get("rounds") is not None:
        data["latency"]["rounds"] = flags["rounds"]
    try:
        return RunConfig.model_validate(data)
    except ValidationError as e:
        raise UserError(validation_message(e, "command line")) from None
