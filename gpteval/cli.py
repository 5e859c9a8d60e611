"""The `gpteval` command: parse, load the config, call the harness or a renderer, map
errors to exit codes (0 ok, 1 regression found by compare, 2 a user's mistake,
130/143 interrupted).  Heavy imports happen inside the subcommands so `--help` is fast.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .errors import UserError

EXIT_USER = 2
EXIT_NOTHING_MEASURED = 1  # a run whose every variant failed or was skipped: a CI job fails


class _Parser(argparse.ArgumentParser):
    """argparse that reports a bad flag in one line with the fix, exit code 2."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(EXIT_USER, f"gpteval: {message}; see `{self.prog} --help`\n")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="gpteval", description="Which GPT optimization to ship on this hardware, "
                "and what it costs in quality.")
    from . import __version__

    p.add_argument("--version", action="version", version=f"gpteval {__version__}")
    sub = p.add_subparsers(dest="command", parser_class=_Parser)

    r = sub.add_parser("run", help="run a study (the embedded default when no CONFIG is given)")
    r.add_argument("config", nargs="?", help="TOML study (see configs/); default: the embedded study")
    r.add_argument("--model", help="'bundled', a preset (tiny, gpt2, gpt2-medium, gpt2-large, "
                   "gpt2-xl), a Hugging Face GPT-2 directory or a gpteval checkpoint")
    r.add_argument("--variants", help="comma-separated pipelines, e.g. eager,int8-dynamic,onnx+ort-int8")
    r.add_argument("--device", choices=["cpu", "cuda", "all"])
    r.add_argument("--text", help="evaluation text file (UTF-8)")
    r.add_argument("--tasks", nargs="+", metavar="FILE", help="task JSONL files")
    r.add_argument("--out", help="output directory (default: reports/<name>)")
    r.add_argument("--name", help="run name")
    r.add_argument("--resume", action="store_true", help="finish an interrupted run in --out")
    r.add_argument("--timeout", type=_positive_float, help="per-variant time limit, seconds")
    r.add_argument("--rounds", type=_positive_int, metavar="N", help="interleaved latency rounds "
                   "(latency.rounds): measure every variant of a model in turn N times, pooled")
    r.add_argument("--tensorboard", metavar="DIR", help="also write TensorBoard scalars there")
    r.add_argument("--quiet", action="store_true", help="print only errors and the report path")

    c = sub.add_parser("compare", help="gate CURRENT against BASELINE (exit 1 on a regression)")
    c.add_argument("baseline")
    c.add_argument("current")
    c.add_argument("--gates", help="TOML gate file (default gates otherwise)")
    c.add_argument("--out", help="also write the comparison as Markdown to this file")

    rep = sub.add_parser("report", help="rebuild every report file from results.json")
    rep.add_argument("results")
    rep.add_argument("--out", help="output directory (default: next to results.json)")

    sub.add_parser("passes", help="list the optimization passes and whether they run here")
    e = sub.add_parser("env", help="environment fingerprint and measured ceilings")
    e.add_argument("--device", choices=["cpu", "cuda"], default="cpu")

    t = sub.add_parser("train", help="train the bundled model on the bundled corpus")
    t.add_argument("--out", required=True, help="checkpoint directory to write")
    t.add_argument("--steps", type=_positive_int, default=None)
    t.add_argument("--threads", type=_positive_int, default=None)
    return p


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a number of seconds") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"'{text}' must be more than 0 seconds")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"'{text}' must be at least 1")
    return value


# ---- subcommands ---------------------------------------------------------------------------
def cmd_run(args) -> int:
    from .config import apply_overrides, default_config, load_config
    from .harness import execute
    from .progress import RunProgress

    cfg = load_config(args.config)[0] if args.config else default_config()
    cfg = apply_overrides(cfg, model=args.model, variants=args.variants, device=args.device,
                          text=args.text, tasks=args.tasks, name=args.name, timeout=args.timeout,
                          rounds=args.rounds)
    if args.tensorboard:  # before the study, not after it
        from .report.tensorboard import require_tensorboard

        require_tensorboard()
    out_dir = Path(args.out) if args.out else Path("reports") / cfg.name
    progress = None if args.quiet else RunProgress()
    state = execute(cfg, out_dir, resume=args.resume, progress=progress, argv=sys.argv[1:])
    from .report import QualityBudget, console_table, write_reports

    budget = QualityBudget(ppl_pct=cfg.budget.ppl_pct, top1_min=cfg.budget.top1_min)
    write_reports(state.results, out_dir, budget)
    if args.tensorboard:
        from .report import write_tensorboard

        write_tensorboard(state.results, Path(args.tensorboard))
    if not args.quiet:
        from rich.console import Console

        console = Console()
        if not console.is_terminal:  # a log file: wide enough that no column is cut
            console = Console(width=170)
        console.print(console_table(state.results, budget))
    print(f"report: {out_dir / 'report.md'}")
    if state.interrupted_by:
        from .harness import EXIT_INTERRUPTED

        print(f"interrupted: finished variants are saved; finish with "
              f"`gpteval run ... --resume --out {out_dir}`", file=sys.stderr)
        return EXIT_INTERRUPTED.get(state.interrupted_by, 130)
    if not any(r.get("status") == "ok" for r in state.results["results"]):
        print("gpteval: no variant was measured (each failed or was skipped; the report says "
              "why)", file=sys.stderr)
        return EXIT_NOTHING_MEASURED
    return 0


def cmd_compare(args) -> int:
    from .compare import compare
    from .gates import default_gates, load_gates
    from .report import load_results
    from .report.results import write_text_atomic

    base, cur = load_results(Path(args.baseline)), load_results(Path(args.current))
    gates = load_gates(Path(args.gates)) if args.gates else default_gates()
    res = compare(base, cur, gates)
    text = res.render_markdown()
    if args.out:  # before printing: a bad path is exit 2, never read as a regression (1)
        out = Path(args.out)
        try:
            write_text_atomic(out, text)
        except OSError as e:
            raise UserError(f"{out}: cannot write the comparison there ({e.strerror}); choose "
                            "another file with --out") from None
    print(text)
    return res.exit_code


def cmd_report(args) -> int:
    from .report import QualityBudget, load_results, write_reports
    from .report.results import check_writable

    path = Path(args.results)
    results = load_results(path)  # RESULTS may be the run's directory too
    out_dir = Path(args.out) if args.out else (path if path.is_dir() else path.parent)
    check_writable(out_dir)
    b = results.get("run", {}).get("config", {}).get("budget", {})
    budget = QualityBudget(**b) if b else QualityBudget()
    write_reports(results, out_dir, budget)
    print(f"report: {out_dir / 'report.md'}")
    return 0


def cmd_passes(args) -> int:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    import optimizers

    table = Table(title="gpteval passes ('+' chains them, ':' gives a parameter)")
    for col in ("pass", "parameter", "what it does", "cpu", "cuda"):
        table.add_column(col, overflow="fold")
    for name in optimizers.REGISTRY:
        cls = optimizers.pass_class(name)
        p = cls()
        param = f"{cls.param} (default {cls.default})" if cls.param else ""
        cells = [p.available(d) or "yes" for d in ("cpu", "cuda")]
        cells = [("yes" if c == "yes" else f"no: {c}") for c in cells]
        # escaped: "pip install 'gpteval[onnx]'" would lose its extra as rich markup
        table.add_row(*(escape(c) for c in (name, param, cls.summary, *cells)))
    Console(width=160).print(table)
    return 0


def cmd_env(args) -> int:
    import json

    from .env import fingerprint
    from .harness import measure_ceilings

    if args.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise UserError("--device cuda was asked for but torch sees no GPU; use --device cpu")
    env = fingerprint()
    env["ceilings"] = measure_ceilings([args.device], 0)
    print(json.dumps(env, indent=2))
    return 0


def cmd_train(args) -> int:
    from .report.results import check_writable
    from .train import TrainConfig, train

    cfg = TrainConfig()
    if args.steps is not None:
        cfg.steps = args.steps
    if args.threads is not None:
        cfg.threads = args.threads
    check_writable(Path(args.out), "the checkpoint")  # before the training, not after it
    train(cfg, Path(args.out))
    return 0


COMMANDS = {"run": cmd_run, "compare": cmd_compare, "report": cmd_report, "passes": cmd_passes,
            "env": cmd_env, "train": cmd_train}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser()
    if not argv:
        argv = ["run"]  # `gpteval` alone runs the default study
    args = parser.parse_args(argv)
    if args.command is None:
        args = parser.parse_args(["run", *argv])
    try:
        return COMMANDS[args.command](args)
    except UserError as e:
        print(f"gpteval: error: {e}", file=sys.stderr)
        return EXIT_USER
    except KeyboardInterrupt:
        print("gpteval: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
