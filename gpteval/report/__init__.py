"""Renderers: results.json in, files out (report.md, results.csv, results.json, plots, benchmark JSON).

Renderers never measure; everything they write is a function of the results dict (and the
quality budget), so a report can be rebuilt from results.json alone.  Heavy imports
(matplotlib, rich, tensorboard) happen inside the functions that need them.
"""

from __future__ import annotations

from pathlib import Path

from gpteval.report.benchmark import write_benchmark
from gpteval.report.markdown import render_markdown
from gpteval.report.results import load_results, write_json_atomic, write_text_atomic
from gpteval.report.tables import console_table, render_csv
from gpteval.report.tensorboard import write_tensorboard
from gpteval.report.verdict import QualityBudget, summary_rows

__all__ = ["QualityBudget", "console_table", "load_results", "render_csv", "render_markdown",
           "summary_rows", "write_reports", "write_tensorboard"]


def write_reports(results: dict, out_dir: Path, budget: QualityBudget | None = None,
                  plots: bool = True) -> list[Path]:
    """Write report.md, results.csv, results.json, plots/*.png, benchmark.json and
    benchmark-smaller.json under out_dir (created if needed); returns the paths written.
    Every file is written atomically (temp file + os.replace)."""
    out_dir = Path(out_dir)
    budget = budget or QualityBudget()
    paths = [write_json_atomic(out_dir / "results.json", results),
             write_text_atomic(out_dir / "report.md", render_markdown(results, budget, plots=plots)),
             write_text_atomic(out_dir / "results.csv", render_csv(results, budget))]
    paths += write_benchmark(results, out_dir, budget)
    if plots:
        from gpteval.report.plots import write_plots

        paths += write_plots(results, out_dir / "plots", budget)
    return paths
