"""Reading results.json: validation at the edge, and the small helpers every renderer shares.

A results file is the single source of truth of a run (schema in plan CONTRACTS /
DESIGN.md).  Renderers and the compare gate only ever see a dict that passed
`load_results` (or was built by the harness), so they may index `results` entries freely.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from gpteval.errors import UserError

SCHEMA_VERSION = 1
STATUSES = ("ok", "skipped", "failed")
REFERENCE_VARIANT = "eager"

# Metric direction (plan CONTRACTS): higher is better for these, lower for everything else.
HIGHER_IS_BETTER = frozenset(
    {"decode_tok_s", "prefill_tok_s", "top1_agree", "next_token_acc", "roofline_pct",
     "bandwidth_gbs", "flops_pct", "speedup"}
)

# Canonical order of metric columns; unknown metrics (acc_<task>, …) follow alphabetically.
METRIC_ORDER = (
    "decode_tok_s", "prefill_tok_s", "ttft_ms", "tpot_ms", "peak_rss_mb", "peak_device_mb",
    "weights_mb", "artifact_mb", "optimize_s", "bandwidth_gbs", "roofline_pct", "flops_pct",
    "ppl", "bpb", "next_token_acc", "kl_mean", "top1_agree", "max_abs_logit_diff",
    "first_divergence",
)


def higher_is_better(metric: str) -> bool:
    """True when a larger value of `metric` is an improvement (acc_<task> included)."""
    return metric in HIGHER_IS_BETTER or metric.startswith("acc_")


def key(entry: dict) -> tuple[str, str, str]:
    """(model, variant, device): identifies one result across runs."""
    return (str(entry["model"]), str(entry["variant"]), str(entry["device"]))


def label(entry_or_key) -> str:
    """'model/variant/device', the name a person reads in reports and gate messages."""
    k = key(entry_or_key) if isinstance(entry_or_key, dict) else entry_or_key
    return "/".join(k)


def metric(entry: dict, name: str):
    """entry['metrics'][name] as a float, or None when absent, null or not a number."""
    value = (entry.get("metrics") or {}).get(name)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


def samples(entry: dict, name: str) -> list[float]:
    """entry['samples'][name] (raw timings in ms), or [] when absent."""
    values = (entry.get("samples") or {}).get(name) or []
    return [float(v) for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)]


def metric_names(entries: list[dict]) -> list[str]:
    """Every metric name that occurs in `entries`, canonical ones first, then sorted."""
    seen = {name for e in entries for name in (e.get("metrics") or {})}
    known = [m for m in METRIC_ORDER if m in seen]
    return known + sorted(seen - set(METRIC_ORDER))


def order_of_appearance(values) -> list:
    """Distinct values in first-seen order (stable grouping without sorting names)."""
    return list(dict.fromkeys(values))


def load_results(path) -> dict:
    """Read and validate a results.json (or a run folder holding one); UserError names the file."""
    path = Path(path)
    if path.is_dir():
        path = path / "results.json"
    if not path.is_file():
        raise UserError(f"{path}: no such results file; pass the results.json written by `gpteval run`.")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise UserError(f"{path} is not a text file; pass the results.json written by "
                        "`gpteval run`.") from None
    except json.JSONDecodeError as err:
        raise UserError(
            f"{path} is not valid JSON (line {err.lineno}, column {err.colno}: {err.msg}); "
            "pass the results.json written by `gpteval run`."
        ) from None
    problem = validate(data)
    if problem:
        raise UserError(f"{path} is not a gpteval results file: {problem}.")
    return data


def validate(data) -> str | None:
    """The first structural problem of a results dict as a phrase, or None when it is usable."""
    if not isinstance(data, dict):
        return "the top level must be a JSON object"
    version = data.get("schema_version")
    if version is None:
        return "it has no schema_version"
    if version != SCHEMA_VERSION:
        return f"schema_version is {version!r} but this gpteval reads schema_version {SCHEMA_VERSION}"
    for block in ("run", "env"):
        if not isinstance(data.get(block, {}), dict):
            return f"'{block}' must be an object"
    entries = data.get("results")
    if not isinstance(entries, list):
        return "'results' must be a list"
    seen = set()
    for i, entry in enumerate(entries):
        where = f"results[{i}]"
        if not isinstance(entry, dict):
            return f"{where} must be an object"
        for field in ("model", "variant", "device", "status"):
            if not isinstance(entry.get(field), str) or not entry[field]:
                return f"{where} has no '{field}' string"
        if entry["status"] not in STATUSES:
            return f"{where} has status {entry['status']!r}, expected one of {', '.join(STATUSES)}"
        for block in ("metrics", "samples", "stats", "engine"):
            if not isinstance(entry.get(block) or {}, dict):
                return f"{where} '{block}' must be an object"
        for name, values in (entry.get("samples") or {}).items():
            if not isinstance(values, list):
                return f"{where} samples '{name}' must be a list of numbers"
        if key(entry) in seen:
            return f"{where} repeats {label(entry)}"
        seen.add(key(entry))
    return None


def write_text_atomic(path: Path, text: str) -> Path:
    """Write text so that a reader never sees half a file: temp file in the same folder + os.replace."""
    return write_bytes_atomic(path, text.encode("utf-8"))


def write_bytes_atomic(path: Path, data: bytes) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_json_atomic(path: Path, data) -> Path:
    """JSON with indent=2, keys in the order given, a trailing newline; written atomically."""
    return write_text_atomic(path, json.dumps(data, indent=2, ensure_ascii=False) + "\n")
