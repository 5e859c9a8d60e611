"""benchmark.json / benchmark-smaller.json for github-action-benchmark dashboards.

github-action-benchmark's custom tools take one direction per file, so a run writes two:

- `benchmark.json`: tool `customBiggerIsBetter` — decode_tok_s, prefill_tok_s, speedup (over
  eager), top1_agree, next_token_acc, acc_<task>, roofline_pct;
- `benchmark-smaller.json`: tool `customSmallerIsBetter` — ttft_ms, tpot_ms, peak_rss_mb,
  weights_mb, ppl, bpb, kl_mean.

A run with several batch sizes (latency.batch = [1, 8]) adds the `_b<B>` forms of the latency
metrics above (decode_tok_s_b8, ttft_ms_b8, …) to the same files.

Each is a list of {"name", "unit", "value", "range"?, "extra"?}: name is
"<model>/<variant>/<device> <metric>", range is "± half the 95 % CI" where the run measured
one, extra says backend, dtype and sample count.  Only ok results are listed.
"""

from __future__ import annotations

from pathlib import Path

from gpteval.report import results as R
from gpteval.report.verdict import QualityBudget, summary_rows

BIGGER_FILE = "benchmark.json"
SMALLER_FILE = "benchmark-smaller.json"

BIGGER = (("decode_tok_s", "tok/s"), ("prefill_tok_s", "tok/s"), ("speedup", "x"),
          ("top1_agree", "fraction"), ("next_token_acc", "fraction"), ("roofline_pct", "%"))
SMALLER = (("ttft_ms", "ms"), ("tpot_ms", "ms"), ("peak_rss_mb", "MB"), ("weights_mb", "MB"),
           ("ppl", "ppl"), ("bpb", "bits/byte"), ("kl_mean", "nats"))


def _half_width(lo, hi) -> str | None:
    if lo is None or hi is None:
        return None
    return f"± {abs(hi - lo) / 2:.4g}"


def _range(entry: dict, metric: str, row: dict) -> str | None:
    """The entry's 95 % CI of `metric` as github-action-benchmark's range string."""
    stats = entry.get("stats") or {}
    base, batch = R.split_batch(metric)

    def series(name: str) -> dict:  # the stats of `name` at the batch size of `metric`
        return stats.get(name if batch is None else R.at_batch(name, batch)) or {}

    if base in ("ttft_ms", "tpot_ms"):
        s = series(base)
        return _half_width(s.get("ci95_lo"), s.get("ci95_hi"))
    if base == "decode_tok_s":
        s, tok_s = series("tpot_ms"), R.metric(entry, metric)
        lo, hi, med = s.get("ci95_lo"), s.get("ci95_hi"), s.get("median")
        if not (lo and hi and med and tok_s):
            return None
        # decode_tok_s = batch * 1000 / tpot: the CI of tpot maps through the same reciprocal
        return _half_width(tok_s * med / hi, tok_s * med / lo)
    if metric == "speedup":
        return _half_width(row["speedup_lo"], row["speedup_hi"])
    return None


def _entry(entry: dict, row: dict, metric: str, unit: str, value: float) -> dict:
    out = {"name": f"{R.label(entry)} {metric}", "unit": unit, "value": value}
    spread = _range(entry, metric, row)
    if spread:
        out["range"] = spread
    engine = entry.get("engine") or {}
    batch = R.split_batch(metric)[1]
    n = len(R.samples(entry, "tpot_ms" if batch is None else R.at_batch("tpot_ms", batch)))
    extra = [f"backend={engine['backend']}" if engine.get("backend") else "",
             f"dtype={engine['dtype']}" if engine.get("dtype") else "", f"repeats={n}" if n else ""]
    if any(extra):
        out["extra"] = " ".join(e for e in extra if e)
    return out


def _further(entry: dict, table: tuple) -> tuple:
    """The `_b<B>` forms of table's latency metrics at the entry's further batch sizes."""
    sizes = R.batches(entry.get("latency_protocol"))[1:]
    return tuple((R.at_batch(m, b), unit) for b in sizes for m, unit in table if m in R.BATCH_METRICS)


def benchmark_entries(results: dict, budget: QualityBudget | None = None) -> tuple[list[dict], list[dict]]:
    """(bigger-is-better entries, smaller-is-better entries), in summary-table order."""
    by_key = {R.key(e): e for e in results["results"]}
    bigger, smaller = [], []
    for row in summary_rows(results, budget):
        if row["status"] != "ok":
            continue
        entry = by_key[(row["model"], row["variant"], row["device"])]
        accuracies = sorted(m for m in (entry.get("metrics") or {}) if m.startswith("acc_"))
        for metric, unit in BIGGER + tuple((m, "fraction") for m in accuracies) + _further(entry, BIGGER):
            value = row["speedup"] if metric == "speedup" else R.metric(entry, metric)
            if value is not None:
                bigger.append(_entry(entry, row, metric, unit, value))
        for metric, unit in SMALLER + _further(entry, SMALLER):
            value = R.metric(entry, metric)
            if value is not None:
                smaller.append(_entry(entry, row, metric, unit, value))
    return bigger, smaller


def write_benchmark(results: dict, out_dir: Path, budget: QualityBudget | None = None) -> list[Path]:
    """Write benchmark.json (bigger is better) and benchmark-smaller.json (smaller is better)."""
    bigger, smaller = benchmark_entries(results, budget)
    out_dir = Path(out_dir)
    return [R.write_json_atomic(out_dir / BIGGER_FILE, bigger),
            R.write_json_atomic(out_dir / SMALLER_FILE, smaller)]
