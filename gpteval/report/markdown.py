"""report.md: the page a person reads to choose a variant.

Rendered from results.json alone, deterministically: the same results and budget always
give the same bytes (no rendering time, no set or hash ordering, seeded bootstrap).
"""

from __future__ import annotations

import json

from gpteval.measure import host
from gpteval.report import fmt
from gpteval.report import results as R
from gpteval.report.verdict import (
    QualityBudget,
    recommendation_line,
    recommendations,
    summary_rows,
)

PLOTS = (
    ("pareto", ("Speed against quality: decode tok/s against the quality lost vs eager "
               "(ppl Δ %, or KL when perplexity is not measured); the line joins the Pareto front.")),
    ("latency", ("Distribution of single decode-step times per variant, on a log scale "
                "(box: quartiles, whiskers: 1.5 IQR).")),
    ("memory", "Peak resident memory of each variant's process and the size of its weights."),
)

# One line per metric: what the number means (DESIGN.md "Metric definitions").
DEFINITIONS = (
    ("decode tok/s", "batch × 1000 / median tpot_ms: generated tokens per second after the first."),
    ("speedup", ("decode tok/s over `eager` on the same model and device; 95 % CI by seeded bootstrap "
                "(2,000 resamples) of the ratio of median tpot_ms.")),
    ("tpot_ms", "time per output token after the first, (total − ttft) / (N − 1), median of repeats."),
    ("TTFT ms (ttft_ms)", ("time from the call with the prompt to the first token's logits, median; "
     "every engine computes the logits of the last prompt position only, as generation does "
     "(Hugging Face generate(): logits_to_keep=1).")),
    ("decode_step_ms", "wall time of one decode step; p50/p90/p99 of all steps."),
    ("peak RSS MB (peak_rss_mb)", ("peak resident memory (VmHWM) of the variant's own process "
     "while it is measured (after loading and optimizing), MiB (2²⁰ bytes).")),
    ("weights MB (weights_mb)", ("bytes of the weights the engine holds in memory (second "
     "copies included: an untied lm_head, and the oneDNN-packed CPU weights compile keeps "
     "beside the dense ones its graph reads; eager-mode variants hold them instead), with its "
     "static KV cache buffers at the primary batch (PyTorch and ONNX Runtime engines alike; a "
     "dynamic cache that grows per step, as the hf peer's, is not counted), MiB (2²⁰ bytes); "
     "artifact_mb likewise for exported files.")),
    ("ppl", ("token-level perplexity over the evaluation text, sliding window (context C, stride S, "
            "only tokens beyond the overlap scored).")),
    ("Δppl", "ppl relative to `eager` on the same model and device, in percent."),
    ("bpb", "bits per byte of the same text: total NLL / ln 2 / bytes; comparable across tokenizers."),
    ("next_token_acc", "top-1 next-token accuracy over the same text."),
    ("top-1 (top1_agree)", "fraction of positions where the variant's argmax token equals `eager`'s."),
    ("KL (kl_mean)", "mean KL(eager ‖ variant) of the next-token distributions, in nats."),
    ("max_abs_logit_diff", "largest absolute logit difference from `eager`."),
    ("first_divergence", ("index of the first greedy-generated token (of quality.generate_tokens "
                         "after the latency prompt) that differs from `eager`'s; none: every "
                         "one agreed.")),
    ("roofline %", ("achieved weight bandwidth (bytes of weights one decode step reads — "
                   "embedding tables only gathered are left out — × decode steps/s) over this "
                   "device's measured memory bandwidth: the best of a GEMV, a reduction and a copy over "
                   "256 MiB (CPU) or 1 GiB (CUDA), measured at the start and at the end of the run "
                   "and, on the CPU, beside every latency round (bandwidth_probe_gbs); the best "
                   "of them counts, listed under Environment; an engine's static KV "
                   "cache counts as read at its full length (a dynamic cache does not: a lower "
                   "bound for the hf peer).  In parentheses, where measured: "
                   "roofline_paired_pct.")),
    ("roofline_paired_pct", ("each latency round's achieved weight bandwidth over the memory "
                            "bandwidth measured right before and after that round (the better "
                            "of a reduction and a copy over 256 MiB; bandwidth_probe_gbs, the "
                            "median of those probes), the median over rounds; CPU only.  On a "
                            "shared host whose bandwidth swings while the run goes on, it "
                            "holds each round to the bandwidth of its own moment, where "
                            "roofline % holds every variant to the best of the whole run.  "
                            "Above 100: the variant's kernels read faster than both probes.  "
                            "How much of the gap no kernel could close (reading a model as "
                            "dozens of tensors rather than one buffer): "
                            "tools/roofline_gap.py.")),
    ("cpu_steal_pct", ("steal time: the share of the host's CPU time the hypervisor gave to "
                      "other guests while the variant's latency was measured (Linux /proc/stat; "
                      "absent elsewhere).  Above a few percent, speeds from that part of the run "
                      "are disturbed and ratios between variants measured at different moments "
                      "swing with it.")),
    ("acc_<task>", ("task accuracy from a local JSONL file (last-word cloze, or multiple choice by "
                   "log-likelihood).")),
    ("verdict", ("accepted when within the quality budget; the recommendation is the fastest "
                "accepted variant.")),
)

BATCH_DEFINITION = (
    "`<metric>_b<B>`", ("a latency metric (ttft_ms, tpot_ms, decode_tok_s, prefill_tok_s, "
    "bandwidth_gbs, roofline_pct, roofline_paired_pct, flops_pct, cpu_steal_pct) measured the same way at batch size B, a further "
    "entry of latency.batch (after one untimed generation at that shape); the plain names are at "
    "the first.  A decode step reads the weights once for the whole batch, so bandwidth_gbs and "
    "roofline % count them once per step."))

# (metric, column title, digits) of the Batch sizes table, repeated for every batch size
BATCH_COLUMNS = (("decode_tok_s", "decode tok/s", 1), ("tpot_ms", "tpot_ms", 2),
                 ("ttft_ms", "TTFT ms", 2), ("roofline_pct", "roofline %", 1))

# (metric, column title, format) of the Quality and fidelity table; acc_<task> columns follow
QUALITY_COLUMNS = (("ppl", "ppl", lambda v: fmt.num(v, 3)), ("bpb", "bpb", lambda v: fmt.num(v, 4)),
                   ("next_token_acc", "next-token acc", lambda v: fmt.num(v, 3)),
                   ("top1_agree", "top-1", lambda v: fmt.num(v, 3)),
                   ("kl_mean", "KL", lambda v: fmt.sig(v, 3)),
                   ("max_abs_logit_diff", "max abs logit diff", lambda v: fmt.sig(v, 3)))

SUMMARY_HEADER = ["variant", "device", "status", "decode tok/s", "speedup vs eager (95 % CI)", "TTFT ms",
                  "peak RSS MB", "weights MB", "ppl", "Δppl", "top-1", "KL", "roofline %", "verdict"]


def _speedup_cell(row: dict) -> str:
    if row["speedup"] is None:
        return fmt.DASH
    text = f"{row['speedup']:.2f}×"
    if row["speedup_lo"] is not None:
        text += f" ({row['speedup_lo']:.2f}–{row['speedup_hi']:.2f})"
    return text


def _not_run(run: dict, entries: list[dict]) -> dict[tuple[str, str], list[str]]:
    """(model, device) -> the variants the resolved config asked for that have no result."""
    config = run.get("config") or {}
    done = {(e["model"], e["variant"], e["device"]) for e in entries}
    missing: dict[tuple[str, str], list[str]] = {}
    for m in config.get("models", []):
        for d in config.get("devices", []):
            for v in config.get("variants", []):
                if (m, v, d) not in done:
                    missing.setdefault((m, d), []).append(v)
    return missing


def _verdict_cell(row: dict) -> str:
    if row["status"] != "ok":
        return fmt.DASH
    if row["verdict"] in ("rejected", "unjudged"):
        return f"{row['verdict']}: {row['verdict_reason']}"
    if row["verdict"] == "accepted" and "top-1 agreement only" in row["verdict_reason"]:
        return "accepted (top-1 only)"
    if row["verdict"] == "accepted" and row["verdict_reason"].startswith("judged on "):
        return f"accepted ({row['verdict_reason'].split(' (')[0]})"
    return row["verdict"]


def summary_cells(row: dict) -> list[str]:
    """The cells of one summary row, in SUMMARY_HEADER order (also used by the terminal table)."""
    variant = f"**{row['variant']}**" if row["recommended"] else row["variant"]
    return [variant, row["device"], row["status"], fmt.num(row["decode_tok_s"], 1), _speedup_cell(row),
            fmt.num(row["ttft_ms"], 2), fmt.num(row["peak_rss_mb"], 0), fmt.num(row["weights_mb"], 1),
            fmt.num(row["ppl"], 3), fmt.pct(row["ppl_delta_pct"], 2), fmt.num(row["top1_agree"], 3),
            fmt.sig(row["kl_mean"], 3), _roofline_cell(row), _verdict_cell(row)]


def _roofline_cell(row: dict) -> str:
    """roofline % against the run's ceiling; roofline_paired_pct after it, where measured."""
    text = fmt.num(row["roofline_pct"], 1)
    if row.get("roofline_paired_pct") is not None:
        text += f" ({row['roofline_paired_pct']:.1f} paired)"
    return text


def _distinct(entries: list[dict], block: str) -> list[dict]:
    """The distinct non-empty `block` dicts of the ok entries, in order of first appearance."""
    texts = R.order_of_appearance(json.dumps(e.get(block) or {}, sort_keys=True)
                                  for e in entries if e["status"] == "ok")
    return [p for p in map(json.loads, texts) if p]


def _batch_words(p: dict) -> str:
    sizes = R.batches(p)
    if len(sizes) > 1:
        return f"batch sizes {', '.join(map(str, sizes))} (primary {sizes[0]})"
    return f"batch {sizes[0] if sizes else p.get('batch')}"


def _protocols(entries: list[dict]) -> list[str]:
    lines = []
    for p in _distinct(entries, "latency_protocol"):
        lines.append(
            f"Latency protocol: {_batch_words(p)}, prompt {p.get('prompt_len')} tokens, "
            f"{p.get('new_tokens')} new tokens, greedy; {p.get('warmup')} warm-up run(s), then repeats "
            f"until ≥ {p.get('min_repeats')} and ≥ {p.get('min_time_s')} s{_rounds_words(p)}.")
    for e in entries:
        if e.get("status") == "ok" and e.get("latency_rounds_note"):
            rounds = (e.get("latency_protocol") or {}).get("rounds") or 1
            lines.append(f"`{R.label(e)}` has {rounds} latency round(s): "
                         f"{fmt.cell(e['latency_rounds_note'])}.")
    steal = _steal_line(entries)
    if steal:
        lines.append(steal)
    for p in _distinct(entries, "quality_protocol"):
        sha = str(p.get("text_sha256") or "")[:12]
        lines.append(f"Quality protocol: context {p.get('context')}, stride {p.get('stride')}, "
                     f"{fmt.num(p.get('n_tokens'))} tokens{_bytes_words(p)} of text (sha256 {sha}…).")
    return lines


def _bytes_words(p: dict) -> str:
    return f" ({fmt.num(p['n_bytes'])} bytes)" if p.get("n_bytes") else ""


def _rounds_words(p: dict) -> str:
    rounds = p.get("rounds") or 1
    if rounds < 2:
        return ""
    return (f", in each of {rounds} interleaved rounds (every variant of the model measured in "
            "turn, each round's samples pooled)")


def _steal_line(entries: list[dict]) -> str | None:
    """The range of host steal time over the variants' latency measurements, with a warning
    naming the disturbed variants; None when no variant recorded it."""
    steal = [pct for _, pct in host.steal_readings(entries)]
    if not steal:
        return None
    line = (f"Host CPU steal time while latency was measured: {min(steal):.1f}-{max(steal):.1f} % "
            "(cpu_steal_pct).")
    high = [f"`{e['variant']}` {pct:.0f} %" for e, pct in host.disturbed(entries)]
    if high:
        line += (f" **Disturbed:** other guests took over {host.DISTURBED_STEAL_PCT:.0f} % of the "
                 f"CPU during {', '.join(high)}; their "
                 "speeds, and ratios against them, are less certain than the intervals say: "
                 "repeat on a quieter machine.")
    return line


def _model_section(model: str, rows: list[dict], entries: list[dict]) -> list[str]:
    table = fmt.md_table(SUMMARY_HEADER, [summary_cells(r) for r in rows], align="lll" + "r" * 10 + "l")
    out = [f"## Model `{model}`", "", table, ""]
    if R.several_batches(entries):
        sizes = " or ".join(str(b) for b in R.primary_batches(entries))
        out += [(f"Speed columns are at batch {sizes}, the first of latency.batch; every batch size "
                 "is under [Batch sizes](#batch-sizes)."), ""]
    for (m, device), best in recommendations(rows).items():
        out.append(f"**Recommendation ({m}, {device}):** {recommendation_line(m, device, best)}.")
        out.append("")
    out += [line + "\n" for line in _protocols(entries)]
    return out


def _ok_entries(rows: list[dict], entries: list[dict]) -> list[dict]:
    """The results entries of the ok summary rows, in the rows' order (by speed)."""
    by_key = {R.key(e): e for e in entries}
    return [by_key[(r["model"], r["variant"], r["device"])] for r in rows if r["status"] == "ok"]


def batch_section(rows: list[dict], entries: list[dict]) -> list[str]:
    """The "Batch sizes" section: one row per ok model × variant × device with BATCH_COLUMNS at
    every batch size of the run; nothing when every result has one batch size."""
    if not R.several_batches(entries):
        return []
    ok = _ok_entries(rows, entries)
    sizes = R.order_of_appearance(b for e in ok for b in R.batches(e.get("latency_protocol")))
    header = ["model", "variant", "device"] + [f"{title} (batch {b})" for b in sizes
                                               for _, title, _ in BATCH_COLUMNS]
    table = []
    for e in ok:
        own = R.batches(e.get("latency_protocol"))
        cells = [e["model"], e["variant"], e["device"]]
        for b in sizes:
            for name, _, digits in BATCH_COLUMNS:
                value = None if b not in own else R.metric(e, name if b == own[0] else R.at_batch(name, b))
                cells.append(fmt.num(value, digits))
        table.append(cells)
    note = "Latency at every size of latency.batch (decode tok/s counts the tokens of the whole batch)."
    align = "lll" + "r" * (len(header) - 3)
    out = ["## Batch sizes", "", note, "", fmt.md_table(header, table, align=align), ""]
    for e in entries:
        for b, reason in sorted((e.get("batch_errors") or {}).items(), key=lambda kv: int(kv[0])):
            out.append(f"- `{R.label(e)}` at batch {b} **failed**: {fmt.cell(reason)}")
    return out + ([""] if out[-1] else [])


def quality_section(rows: list[dict], entries: list[dict]) -> list[str]:
    """The "Quality and fidelity" section: every quality metric of each ok variant, task
    accuracies included (the summary table has room for ppl, top-1 and KL only)."""
    ok = _ok_entries(rows, entries)
    if not ok:
        return []
    tasks = sorted({m for e in ok for m in (e.get("metrics") or {})
                    if m.startswith("acc_") and R.metric(e, m) is not None})
    header = (["model", "variant", "device"] + [title for _, title, _ in QUALITY_COLUMNS] + tasks
              + ["first divergence"])
    table = []
    for e in ok:
        cells = [e["model"], e["variant"], e["device"]]
        cells += [show(R.metric(e, name)) for name, _, show in QUALITY_COLUMNS]
        cells += [fmt.num(R.metric(e, t), 3) for t in tasks]
        first = R.metric(e, "first_divergence")
        if first is not None:
            cells.append(fmt.num(int(first)))
        else:  # none: generation agreed throughout; a dash where fidelity was not measured
            cells.append("none" if R.metric(e, "top1_agree") is not None else fmt.num(None))
        table.append(cells)
    return ["## Quality and fidelity", "",
            fmt.md_table(header, table, align="lll" + "r" * (len(header) - 3)), ""]


# the environment block's first rows, in this order (other keys follow the ceilings)
ENV_ROWS = ("cpu", "cpu_id", "cpu_isa", "cores", "threads", "ram_gb", "os", "python",
            "git_commit")


def _environment(env: dict) -> str:
    rows = []
    for k in ENV_ROWS:
        if env.get(k) is not None:
            rows.append([k, str(env[k])])
    packages = env.get("packages") or {}
    if packages:
        rows.append(["packages", ", ".join(f"{k} {v}" for k, v in packages.items() if v)])
    gpu = env.get("gpu")
    if isinstance(gpu, dict):
        rows.append(["gpu", ", ".join(f"{k}: {v}" for k, v in gpu.items())])
    else:
        rows.append(["gpu", str(gpu or "none")])
    for device, ceil in (env.get("ceilings") or {}).items():
        if isinstance(ceil, dict):
            rows.append([f"ceilings ({device})", ", ".join(
                f"{k} {fmt.num(v, 1) if isinstance(v, (int, float)) else v}" for k, v in ceil.items())])
    known = {*ENV_ROWS, "packages", "gpu", "ceilings", "ceilings_measured"}
    for k, v in env.items():
        if k not in known and v is not None:
            rows.append([k, str(v)])
    return fmt.md_table(["", "value"], rows, align="ll")


def render_markdown(results: dict, budget: QualityBudget | None = None, plots: bool = True) -> str:
    """report.md for a validated results dict; byte-for-byte deterministic.  plots=False leaves
    out the links to plots/*.png (for a report written without them)."""
    budget = budget or QualityBudget()
    run = results.get("run") or {}
    entries = results["results"]
    rows = summary_rows(results, budget)
    name = run.get("name") or "unnamed run"
    out = [f"# gpteval report: {name}", ""]
    facts = [f"gpteval {run['gpteval_version']}" if run.get("gpteval_version") else None,
             f"started {run['started']}" if run.get("started") else None,
             f"finished {run['finished']}" if run.get("finished") else None]
    if any(facts):
        out += [" · ".join(f for f in facts if f), ""]
    if run.get("interrupted"):
        out += ["> **Interrupted run:** some variants or latency rounds were not measured; the tables show what finished.",
                ""]
    out += [(f"Quality budget: {budget.describe()} (same model, same device). "
            "Rows are sorted by decode speed; the recommended variant is in bold."), ""]
    if not entries:
        out += ["No results were recorded.", ""]
    for model in R.order_of_appearance(e["model"] for e in entries):
        out += _model_section(model, [r for r in rows if r["model"] == model],
                              [e for e in entries if e["model"] == model])
    out += batch_section(rows, entries)
    out += quality_section(rows, entries)
    if plots and any(e["status"] == "ok" for e in entries):
        out += ["## Plots", ""]
        for stem, caption in PLOTS:
            out += [f"![{stem}](plots/{stem}.png)", "", caption, ""]
    not_ok = [e for e in entries if e["status"] != "ok"]
    out += ["## Skipped and failed", ""]
    out += [f"- `{R.label(e)}` **{e['status']}**: {fmt.cell(e.get('reason') or 'no reason recorded')}"
            for e in not_ok] or (["None: every variant ran."] if entries else ["None."])
    missing = _not_run(run, entries) if run.get("interrupted") else {}
    out += [f"- `{model}` on {device} **not run** (the run was interrupted first; finish with "
            f"`gpteval run CONFIG --resume --out DIR`): {', '.join(f'`{v}`' for v in variants)}"
            for (model, device), variants in missing.items()]
    out += ["", "## Metric definitions", ""]
    out += [f"- **{term}**: {text}" for term, text in DEFINITIONS]
    if R.several_batches(entries):
        out.append(f"- **{BATCH_DEFINITION[0]}**: {BATCH_DEFINITION[1]}")
    out += ["", "## Environment", "", _environment(results.get("env") or {}), ""]
    config = run.get("config")
    if config:
        out += ["## Configuration (resolved)", "", "```toml", fmt.to_toml(config), "```", ""]
    return "\n".join(out).rstrip("\n") + "\n"
