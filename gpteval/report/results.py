"""Reading results.json: validation at the edge, and the small helpers every renderer shares.

A results file is the single source of truth of a run (schema in plan CONTRACTS /
DESIGN.md).  Renderers and the compare gate only ever see a dict that passed
`load_results` (or was built by the harness), so they may index `results` entries freely.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from pathlib import Path

from gpteval.errors import UserError

SCHEMA_VERSION = 1
STATUSES = ("ok", "skipped", "failed")
REFERENCE_VARIANT = "eager"

# Metric direction (plan CONTRACTS): higher is better for these, lower for everything else.
HIGHER_IS_BETTER = frozenset(
    {"decode_tok_s", "prefill_tok_s", "top1_agree", "next_token_acc", "roofline_pct",
     "roofline_paired_pct", "bandwidth_gbs", "bandwidth_probe_gbs", "flops_pct", "speedup"}
)

# Canonical order of metric columns; unknown metrics (acc_<task>, …) follow alphabetically.
METRIC_ORDER = (
    "decode_tok_s", "prefill_tok_s", "ttft_ms", "tpot_ms", "peak_rss_mb", "peak_device_mb",
    "weights_mb", "artifact_mb", "optimize_s", "bandwidth_gbs", "roofline_pct",
    "bandwidth_probe_gbs", "roofline_paired_pct", "flops_pct", "cpu_steal_pct", "ppl", "bpb",
    "next_token_acc", "kl_mean", "top1_agree", "max_abs_logit_diff", "first_divergence",
)


# Latency metrics measured again at every further size of latency.batch, named with a `_b<B>`
# suffix (decode_tok_s_b8); their stats and samples carry the same suffix (decode_step_ms_b8).
BATCH_METRICS = ("decode_tok_s", "prefill_tok_s", "ttft_ms", "tpot_ms", "bandwidth_gbs",
                 "roofline_pct", "bandwidth_probe_gbs", "roofline_paired_pct", "flops_pct",
                 "cpu_steal_pct")
BATCH_SERIES = ("ttft_ms", "tpot_ms", "decode_step_ms")
# one sample per latency round, CPU runs only (measure/latency.py: roofline_paired_pct)
ROUND_SERIES = ("bandwidth_probe_gbs", "roofline_round_pct")
_BATCH_SUFFIX = re.compile(r"^(?P<base>[a-z0-9_]+?)_b(?P<batch>[1-9][0-9]*)$")


def at_batch(name: str, batch: int) -> str:
    """The name of `name` measured at a further batch size: ('tpot_ms', 8) -> 'tpot_ms_b8'."""
    return f"{name}_b{batch}"


def split_batch(name: str) -> tuple[str, int | None]:
    """('decode_tok_s_b8') -> ('decode_tok_s', 8); a name without a batch suffix -> (name, None).
    Only latency metrics and series carry the suffix (acc_<task> names are left alone)."""
    m = _BATCH_SUFFIX.match(name)
    if m and m["base"] in BATCH_METRICS + BATCH_SERIES + ROUND_SERIES:
        return m["base"], int(m["batch"])
    return name, None


def batches(protocol: dict | None) -> list[int]:
    """Every batch size of a latency_protocol, the primary (main-table) one first.  Reads
    `batches` (written since latency.batch may be a list) or an int or list `batch`."""
    protocol = protocol or {}
    value = protocol.get("batches", protocol.get("batch"))
    values = value if isinstance(value, list) else [value]
    return [int(b) for b in values if isinstance(b, int) and not isinstance(b, bool)]


def further_batches(entry: dict) -> list[int]:
    """The batch sizes after the primary one that an entry was measured at (`_b<B>` names)."""
    return batches(entry.get("latency_protocol"))[1:]


def shared_further_batches(a: dict, b: dict) -> list[int]:
    """The further batch sizes of entry `a` that entry `b` was measured at too."""
    return [n for n in further_batches(a) if n in further_batches(b)]


def several_batches(entries: list[dict]) -> bool:
    """True when some ok entry measured latency at more than one batch size."""
    return any(len(batches(e.get("latency_protocol"))) > 1 for e in entries if e.get("status") == "ok")


def primary_batches(entries: list[dict]) -> list[int]:
    """The distinct primary (first) batch sizes of the ok entries, in order of appearance."""
    firsts = (batches(e.get("latency_protocol"))[:1] for e in entries if e.get("status") == "ok")
    return order_of_appearance(b for first in firsts for b in first)


def higher_is_better(metric: str) -> bool:
    """True when a larger value of `metric` is an improvement (acc_<task> and the `_b<B>`
    forms of latency metrics included)."""
    metric = split_batch(metric)[0]
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


# where the fastest repeat of a speed metric comes from: (raw series, rate?) -- a rate
# (tok/s) scales with 1 / time, so its best is metric x median time / fastest time
BEST_SOURCES = {"tpot_ms": ("tpot_ms", False), "ttft_ms": ("ttft_ms", False),
                "decode_step_ms": ("decode_step_ms", False), "decode_tok_s": ("tpot_ms", True),
                "prefill_tok_s": ("ttft_ms", True)}


def best_metric(entry: dict, name: str):
    """The metric at its fastest repeat (a time's minimum, a rate's maximum), from the raw
    samples: on a host whose speed swings within a run, what the variant can do, where the
    median also says when its repeats ran.  None without samples."""
    base, batch = split_batch(name)
    if base not in BEST_SOURCES:
        return None
    series, rate = BEST_SOURCES[base]
    series += f"_b{batch}" if batch else ""
    values = samples(entry, series)
    if not values or min(values) <= 0:
        return None
    if not rate:
        return min(values)
    value, median_time = metric(entry, name), metric(entry, series)
    return None if value is None or not median_time else value * median_time / min(values)


def metric_names(entries: list[dict]) -> list[str]:
    """Every metric name that occurs in `entries`, canonical ones first, then sorted."""
    seen = {name for e in entries for name in (e.get("metrics") or {})}
    known = [m for m in METRIC_ORDER if m in seen]
    # the `_b<B>` forms next: by batch size, then in the canonical order of their base
    suffixed = sorted((m for m in seen if split_batch(m)[1] is not None), key=_batch_order)
    return known + suffixed + sorted(seen - set(METRIC_ORDER) - set(suffixed))


def _batch_order(name: str) -> tuple[int, int, str]:
    base, batch = split_batch(name)
    return batch or 0, METRIC_ORDER.index(base) if base in METRIC_ORDER else len(METRIC_ORDER), name


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


def check_writable(out_dir: Path, what: str = "the report") -> None:
    """A directory the command will write into, checked before the work that fills it
    (a run, a training): a path the user cannot write is one line and exit 2, up front."""
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        probe = out_dir / ".gpteval-write-test"
        probe.write_text("ok")
        probe.unlink()
    except OSError as e:
        raise UserError(f"{out_dir}: cannot write {what} there ({e.strerror}); choose "
                        "another directory with --out") from None


def write_text_atomic(path: Path, text: str) -> Path:
    """Write text so that a reader never sees half a file: temp file in the same folder + os.replace."""
    return write_bytes_atomic(path, text.encode("utf-8"))


def write_bytes_atomic(path: Path, data: bytes) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600; a report is for sharing
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _umask() -> int:
    mask = os.umask(0)  # reading the umask means setting it; put it straight back
    os.umask(mask)
    return mask


def write_json_atomic(path: Path, data) -> Path:
    """JSON with indent=2, keys in the order given, a trailing newline; written atomically."""
    return write_text_atomic(path, json.dumps(data, indent=2, ensure_ascii=False) + "\n")
