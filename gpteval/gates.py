"""The gate file's schema (`gpteval compare --gates FILE`): what each TOML key means, its
defaults, and one-sentence errors naming the file and key.  compare.py applies the gates.

`[[ratio]]` gates compare two variants of ONE run; `[quality.<metric>]` tolerances bound the
deterministic metrics; the top-level keys set the speed test (see compare.py's docstring).
"""

from __future__ import annotations

import fnmatch
from pathlib import Path
from typing import Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from gpteval.errors import UserError, did_you_mean
from gpteval.report import results as R

SPEED_METRICS = ("decode_step_ms", "tpot_ms", "ttft_ms")


def _known_metric(name: str) -> bool:
    return R.split_batch(name)[0] in R.METRIC_ORDER or name.startswith("acc_")


class Tolerance(BaseModel):
    """How far a deterministic metric may worsen: by `abs` units or `rel_pct` % of the baseline
    (the larger wins); `off = true` removes a default gate."""

    model_config = ConfigDict(extra="forbid")
    abs: float | None = Field(default=None, ge=0)
    rel_pct: float | None = Field(default=None, ge=0)
    off: bool = False

    def allowed(self, baseline: float) -> float:
        return max(self.abs or 0.0, (self.rel_pct or 0.0) / 100.0 * abs(baseline))

    def describe(self, metric: str) -> str:
        sign = "−" if R.higher_is_better(metric) else "+"
        if self.rel_pct is not None and self.abs is None:
            return f"limit {sign}{self.rel_pct:g} %"
        parts = [f"{sign}{self.abs:g}"]
        if self.rel_pct is not None:
            parts.append(f"{sign}{self.rel_pct:g} %")
        return "limit " + " or ".join(parts)


class RatioGate(BaseModel):
    """current[variant].metric / current[over].metric, inside one run: must be ≥ min / ≤ max, and
    (tolerance_pct) not fall more than that below the baseline run's own ratio.  Checked on every
    model × device of the current run unless `model` / `device` narrow it; where the variant or
    `over` is not ok there, the row is 'missing', which fails the gate."""

    model_config = ConfigDict(extra="forbid")
    variant: str
    over: str = R.REFERENCE_VARIANT
    metric: str = "decode_tok_s"
    min: float | None = None
    max: float | None = None
    tolerance_pct: float | None = Field(default=None, ge=0)
    model: str | None = None
    device: str | None = None
    stat: Literal["median", "best"] = "median"

    @field_validator("metric")
    @classmethod
    def _metric(cls, v):
        if not _known_metric(v):
            raise ValueError(f"unknown metric {v!r}.{did_you_mean(v, R.METRIC_ORDER)}")
        return v

    @model_validator(mode="after")
    def _best_needs_samples(self):
        if self.stat == "best" and R.split_batch(self.metric)[0] not in R.BEST_SOURCES:
            raise ValueError(f"stat 'best' takes a timed metric's fastest repeat "
                             f"({', '.join(R.BEST_SOURCES)}), not {self.metric!r}")
        return self


DEFAULT_QUALITY = {
    "ppl": Tolerance(rel_pct=1.0), "bpb": Tolerance(rel_pct=1.0), "top1_agree": Tolerance(abs=0.01),
    "kl_mean": Tolerance(abs=0.01), "next_token_acc": Tolerance(abs=0.01), "acc_*": Tolerance(abs=0.02),
}


class Gates(BaseModel):
    """The gate settings (TOML via load_gates; Gates() is the default gate)."""

    model_config = ConfigDict(extra="forbid")
    absolute: bool = True
    min_effect_pct: float = Field(default=10.0, ge=0)
    alpha: float = Field(default=0.01, gt=0, lt=0.5)
    speed_metrics: list[str] = ["decode_step_ms", "ttft_ms"]
    reference: str = R.REFERENCE_VARIANT
    speedup_tolerance_pct: float | None = Field(default=None, ge=0)
    seed: int = 0
    quality: dict[str, Tolerance] = Field(default_factory=lambda: dict(DEFAULT_QUALITY))
    ratio: list[RatioGate] = Field(default_factory=list)

    @field_validator("speed_metrics")
    @classmethod
    def _speed(cls, v):
        for name in v:
            if name not in SPEED_METRICS:
                raise ValueError(f"unknown speed metric {name!r}; choose from {', '.join(SPEED_METRICS)}."
                                 f"{did_you_mean(name, SPEED_METRICS)}")
        return v

    @field_validator("quality")
    @classmethod
    def _quality(cls, v):
        for name in v:
            if not (_known_metric(name) or name == "acc_*"):
                hint = did_you_mean(name, list(R.METRIC_ORDER) + ["acc_*"])
                raise ValueError(f"unknown metric {name!r}.{hint}")
        return {**DEFAULT_QUALITY, **v}  # the user's entries override the defaults, key by key

    def tolerance(self, metric: str) -> Tolerance | None:
        tol = self.quality.get(metric) or next(
            (t for p, t in self.quality.items() if "*" in p and fnmatch.fnmatch(metric, p)), None)
        return None if tol is None or tol.off else tol


def default_gates() -> Gates:
    """The gate used when no gate file is given (the defaults documented on Gates)."""
    return Gates()


def load_gates(path) -> Gates:
    """Read a gate TOML file; UserError naming the file and key for anything unknown or invalid."""
    import tomllib

    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such gate file; pass a TOML file or leave --gates out for the "
                        "default gate.")
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
        raise UserError(f"{path} is not valid TOML: {err}.") from None
    try:
        return Gates.model_validate(data)
    except ValidationError as err:
        raise UserError(f"{path}: {_first_error(err)}") from None


def _first_error(err: ValidationError) -> str:
    e = err.errors()[0]
    loc = ".".join(str(p) for p in e["loc"])
    more = f" (and {err.error_count() - 1} more)" if err.error_count() > 1 else ""
    if e["type"] == "extra_forbidden":
        where = e["loc"][:-1]
        model = Tolerance if where[:1] == ("quality",) else RatioGate if where[:1] == ("ratio",) else Gates
        return f"unknown key '{loc}'.{did_you_mean(e['loc'][-1], model.model_fields)}{more}"
    return f"{loc}: {e['msg'].removeprefix('Value error, ')}{more}"
