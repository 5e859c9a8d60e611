"""results.csv (one row per model × variant × device, for pandas) and the end-of-run terminal table."""

from __future__ import annotations

import csv
import io
from pathlib import Path

from gpteval.report import results as R
from gpteval.report.markdown import SUMMARY_HEADER, summary_cells
from gpteval.report.verdict import (
    QualityBudget,
    recommendation_line,
    recommendations,
    summary_rows,
)

ID_COLUMNS = ["model", "variant", "device", "status", "reason", "backend", "dtype",
              "batch", "prompt_len", "new_tokens"]
DERIVED_COLUMNS = ["speedup", "speedup_ci95_lo", "speedup_ci95_hi", "ppl_delta_pct",
                   "decode_step_ms_p50", "decode_step_ms_p90", "decode_step_ms_p99",
                   "verdict", "verdict_reason", "recommended"]


def _flat_metrics(entry: dict) -> dict:
    """entry['metrics'] with dict values flattened: peak_device_mb={allocated, reserved} becomes
    peak_device_mb_allocated, peak_device_mb_reserved (the unit stays inside the name)."""
    flat = {}
    for name, value in (entry.get("metrics") or {}).items():
        if isinstance(value, dict):
            flat.update({f"{name}_{sub}": v for sub, v in value.items()})
        else:
            flat[name] = value
    return flat


def csv_rows(results: dict, budget: QualityBudget | None = None) -> tuple[list[str], list[dict]]:
    """(columns, rows) of results.csv, rows in the order of the report's summary tables."""
    by_key = {R.key(e): e for e in results["results"]}
    rows = []
    for summary in summary_rows(results, budget):
        entry = by_key[(summary["model"], summary["variant"], summary["device"])]
        engine, proto = entry.get("engine") or {}, entry.get("latency_protocol") or {}
        steps = (entry.get("stats") or {}).get("decode_step_ms") or {}
        row = {c: summary.get(c) for c in ("model", "variant", "device", "status", "reason")}
        # batch: the primary batch size, the one the unsuffixed latency columns are at
        row.update(backend=engine.get("backend"), dtype=engine.get("dtype"),
                   batch=(R.batches(proto) or [None])[0], prompt_len=proto.get("prompt_len"),
                   new_tokens=proto.get("new_tokens"))
        row.update(_flat_metrics(entry))
        row.update(speedup=summary["speedup"], speedup_ci95_lo=summary["speedup_lo"],
                   speedup_ci95_hi=summary["speedup_hi"], ppl_delta_pct=summary["ppl_delta_pct"],
                   decode_step_ms_p50=steps.get("median"), decode_step_ms_p90=steps.get("p90"),
                   decode_step_ms_p99=steps.get("p99"), verdict=summary["verdict"],
                   verdict_reason=summary["verdict_reason"], recommended=summary["recommended"])
        rows.append(row)
    metric_cols = R.metric_names([{"metrics": _flat_metrics(e)} for e in results["results"]])
    return ID_COLUMNS + metric_cols + DERIVED_COLUMNS, rows


def _csv_value(value) -> str:
    if value is None:
        return ""  # pandas reads an empty field as NaN
    return repr(value) if isinstance(value, float) else str(value)


def render_csv(results: dict, budget: QualityBudget | None = None) -> str:
    """results.csv text: header with units in the column names, then one row per result."""
    columns, rows = csv_rows(results, budget)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow([_csv_value(row.get(c)) for c in columns])
    return buf.getvalue()


def write_csv(results: dict, path: Path, budget: QualityBudget | None = None) -> Path:
    return R.write_text_atomic(path, render_csv(results, budget))


# short headers: the terminal is narrow (report.md defines each column in full)
TERMINAL_HEADER = ["variant", "device", "tok/s", "speedup (95% CI)", "TTFT ms", "RSS MB", "Δppl",
                   "top-1", "verdict"]


def console_table(results: dict, budget: QualityBudget | None = None):
    """A rich Table for the end-of-run terminal summary: the report's summary columns that
    matter at a glance (report.md has all of them); recommendations in the caption."""
    from rich import box
    from rich.markup import escape
    from rich.table import Table

    rows = summary_rows(results, budget)
    name = (results.get("run") or {}).get("name") or "gpteval"
    several_models = len({r["model"] for r in rows}) > 1
    header = (["model"] if several_models else []) + TERMINAL_HEADER
    table = Table(title=escape(f"gpteval: {name}"), title_justify="left", box=box.SIMPLE_HEAD,
                  padding=(0, 1, 0, 0), pad_edge=False)
    for column in header:
        numeric = column not in ("model", "variant", "device", "verdict")
        table.add_column(escape(column), justify="right" if numeric else "left", no_wrap=True)
    styles = {"rejected": "red", "skipped": "dim", "failed": "red", "unjudged": "yellow"}
    for row in rows:
        full = dict(zip(SUMMARY_HEADER, summary_cells(row)))
        cells = [row["variant"], row["device"]] + [full[c] for c in (
            "decode tok/s", "speedup vs eager (95 % CI)", "TTFT ms", "peak RSS MB", "Δppl", "top-1")]
        cells.append(row["verdict"] + (" ★" if row["recommended"] else ""))
        cells = ([row["model"]] if several_models else []) + cells
        style = "bold green" if row["recommended"] else styles.get(row["verdict"])
        table.add_row(*(escape(c) for c in cells), style=style)
    lines = [f"Recommendation ({m}, {d}): {recommendation_line(m, d, best)}"
             for (m, d), best in recommendations(rows).items()]
    if R.several_batches(results["results"]):
        sizes = " or ".join(str(b) for b in R.primary_batches(results["results"]))
        lines.append(f"Speed at batch {sizes}; every batch size is in report.md (Batch sizes).")
    table.caption = escape("\n".join(lines).replace("`", ""))
    table.caption_justify = "left"
    return table
