"""Which variants stay within the quality budget, and which one to ship.

One summary row per result (model × variant × device), shared by the Markdown report, the
CSV and the end-of-run terminal table, so every output says the same thing.
"""

from __future__ import annotations

from dataclasses import dataclass

from gpteval.errors import UserError
from gpteval.report import results as R
from gpteval.report.significance import bootstrap_ratio_ci


@dataclass(frozen=True)
class QualityBudget:
    """How much quality a variant may lose against `eager` (same model, same device).

    ppl_pct: perplexity may rise by at most this many percent;
    top1_min: next-token top-1 agreement with eager must be at least this.
    """

    ppl_pct: float = 2.0
    top1_min: float = 0.95

    def __post_init__(self):
        if not self.ppl_pct >= 0:
            raise UserError(f"quality budget ppl_pct must be >= 0 (got {self.ppl_pct}); e.g. 2.0 for +2 %.")
        if not 0.0 <= self.top1_min <= 1.0:
            raise UserError(f"quality budget top1_min must be between 0 and 1 (got {self.top1_min}); "
                            "e.g. 0.95.")

    def describe(self) -> str:
        return f"ppl within +{self.ppl_pct:g} % of eager and top-1 agreement ≥ {self.top1_min:g}"


@dataclass(frozen=True)
class Verdict:
    """accepted: True/False, or None when not judged (variant not ok, or no eager to judge against).
    label: 'reference' | 'accepted' | 'rejected' | 'skipped' | 'failed' | 'unjudged'; reason: why."""

    accepted: bool | None
    label: str
    reason: str


def judge(entry: dict, reference: dict | None, budget: QualityBudget) -> Verdict:
    """The verdict of one result against the eager result of its model × device."""
    if entry["status"] != "ok":
        return Verdict(None, entry["status"], entry.get("reason") or "")
    if entry["variant"] == R.REFERENCE_VARIANT:
        return Verdict(True, "reference", "the unoptimized model every variant is judged against")
    if reference is None or reference["status"] != "ok":
        return Verdict(None, "unjudged", f"no ok `{R.REFERENCE_VARIANT}` result on this model and device")
    problems, checked = [], []
    ppl, ref_ppl = R.metric(entry, "ppl"), R.metric(reference, "ppl")
    if ppl is not None and ref_ppl:
        delta = (ppl / ref_ppl - 1.0) * 100.0
        checked.append("ppl")
        if delta > budget.ppl_pct:
            problems.append(f"ppl {delta:+.2f} % > +{budget.ppl_pct:g} %")
    top1 = R.metric(entry, "top1_agree")
    if top1 is not None:
        checked.append("top-1")
        if top1 < budget.top1_min:
            problems.append(f"top-1 {top1:.3f} < {budget.top1_min:g}")
    if not checked:
        return Verdict(None, "unjudged", "no ppl or top-1 agreement measured")
    if problems:
        return Verdict(False, "rejected", "; ".join(problems))
    if "ppl" not in checked:
        note = (entry.get("metrics") or {}).get("quality_note") or entry.get("quality_note")
        why = note or ("eager has no perplexity" if ppl is not None else "no perplexity: random weights")
        return Verdict(True, "accepted", f"judged by top-1 agreement only ({why})")
    return Verdict(True, "accepted", "within budget")


def is_random_weights(entry: dict) -> bool:
    """A preset with random weights: no perplexity, and its logits are near-uniform, so
    top-1 agreement flips on noise that a trained model shrugs off."""
    return entry["status"] == "ok" and R.metric(entry, "ppl") is None and bool(entry.get("quality_note"))


def judge_by_trained(entry: dict, trained: dict[tuple[str, str], tuple[str, Verdict]]) -> Verdict | None:
    """A random-weight variant takes the verdict of the same pipeline on a trained model of
    the same run and device (speed from the preset, quality from the trained model); None
    when the run has no such result."""
    hit = trained.get((entry["variant"], entry["device"]))
    if hit is None or hit[1].accepted is None or entry["variant"] == R.REFERENCE_VARIANT:
        return None
    model, v = hit
    where = f"judged on `{model}` (random weights here)"
    return Verdict(v.accepted, v.label, f"{where}: {v.reason}")


def speedup_ci(entry: dict, reference: dict | None, seed: int = 0):
    """(speedup, lo, hi) of decode tok/s over the reference; CI by bootstrap of the ratio of
    median tpot (reference / variant), scaled by the batch ratio. None where not computable."""
    if reference is None or reference["status"] != "ok" or entry["status"] != "ok":
        return None, None, None
    tok_s, ref_tok_s = R.metric(entry, "decode_tok_s"), R.metric(reference, "decode_tok_s")
    if not tok_s or not ref_tok_s:
        return None, None, None
    speedup = tok_s / ref_tok_s
    if entry is reference:
        return speedup, None, None  # exactly 1: a CI of a run against itself says nothing
    a, b = R.samples(reference, "tpot_ms"), R.samples(entry, "tpot_ms")
    if len(a) < 2 or len(b) < 2:
        return speedup, None, None
    # decode_tok_s = batch * 1000 / median(tpot): the batch factor is whatever remains of the ratio
    scale = speedup / (sorted_median(a) / sorted_median(b))
    lo, hi = bootstrap_ratio_ci(a, b, seed=seed)
    return speedup, lo * scale, hi * scale


def sorted_median(values) -> float:
    s = sorted(values)
    mid = len(s) // 2
    return s[mid] if len(s) % 2 else (s[mid - 1] + s[mid]) / 2.0


def _reference_of(results: dict) -> dict:
    return {(e["model"], e["device"]): e for e in results["results"] if e["variant"] == R.REFERENCE_VARIANT}


def summary_rows(results: dict, budget: QualityBudget | None = None) -> list[dict]:
    """One dict per result, grouped by model then device (order of first appearance), fastest
    first within a group, results that are not ok last.  Keys: model, variant, device, status,
    reason, decode_tok_s, speedup, speedup_lo, speedup_hi, ttft_ms, peak_rss_mb, weights_mb, ppl,
    ppl_delta_pct, top1_agree, kl_mean, roofline_pct, roofline_paired_pct, verdict,
    verdict_reason, accepted, recommended."""
    budget = budget or QualityBudget()
    refs = _reference_of(results)
    entries = results["results"]
    models = R.order_of_appearance(e["model"] for e in entries)
    devices = R.order_of_appearance(e["device"] for e in entries)
    # verdicts of trained models first: random-weight presets borrow them per pipeline
    trained: dict[tuple[str, str], tuple[str, Verdict]] = {}
    for entry in entries:
        if entry["status"] == "ok" and R.metric(entry, "ppl") is not None:
            v = judge(entry, refs.get((entry["model"], entry["device"])), budget)
            trained.setdefault((entry["variant"], entry["device"]), (entry["model"], v))
    rows = []
    for entry in entries:
        ref = refs.get((entry["model"], entry["device"]))
        verdict = judge(entry, ref, budget)
        if is_random_weights(entry):
            verdict = judge_by_trained(entry, trained) or verdict
        speedup, lo, hi = speedup_ci(entry, ref)
        ppl, ref_ppl = R.metric(entry, "ppl"), (R.metric(ref, "ppl") if ref else None)
        rows.append({
            "model": entry["model"], "variant": entry["variant"], "device": entry["device"],
            "status": entry["status"], "reason": entry.get("reason") or "",
            "decode_tok_s": R.metric(entry, "decode_tok_s"),
            "speedup": speedup, "speedup_lo": lo, "speedup_hi": hi,
            "ttft_ms": R.metric(entry, "ttft_ms"), "peak_rss_mb": R.metric(entry, "peak_rss_mb"),
            "weights_mb": R.metric(entry, "weights_mb"), "ppl": ppl,
            "ppl_delta_pct": (ppl / ref_ppl - 1.0) * 100.0 if ppl is not None and ref_ppl else None,
            "top1_agree": R.metric(entry, "top1_agree"), "kl_mean": R.metric(entry, "kl_mean"),
            "roofline_pct": R.metric(entry, "roofline_pct"),
            "roofline_paired_pct": R.metric(entry, "roofline_paired_pct"),
            "verdict": verdict.label, "verdict_reason": verdict.reason, "accepted": verdict.accepted,
            "recommended": False,
        })
    rows.sort(key=lambda r: (models.index(r["model"]), devices.index(r["device"]),
                             r["status"] != "ok", -(r["decode_tok_s"] or 0.0), r["variant"]))
    for row in recommendations(rows).values():
        if row is not None:
            row["recommended"] = True
    return rows


def recommendations(rows: list[dict]) -> dict[tuple[str, str], dict | None]:
    """(model, device) -> the fastest accepted row by decode tok/s (ties: variant name), or None."""
    best: dict[tuple[str, str], dict | None] = {}
    for row in rows:
        group = (row["model"], row["device"])
        best.setdefault(group, None)
        if row["accepted"] is not True or row["decode_tok_s"] is None:
            continue
        current = best[group]
        rank = (-row["decode_tok_s"], row["variant"])
        if current is None or rank < (-current["decode_tok_s"], current["variant"]):
            best[group] = row
    return best


def recommendation_line(model: str, device: str, row: dict | None) -> str:
    """One sentence naming what to ship on this model × device, with what it costs."""
    if row is None:
        return f"no variant of `{model}` on {device} is within the quality budget (is `eager` ok?)"
    if row["variant"] == R.REFERENCE_VARIANT:
        return f"`{R.REFERENCE_VARIANT}` on {device}: no optimized variant is both faster and within budget"
    parts = [f"{row['speedup']:.2f}× eager decode" if row["speedup"] else "decode speed vs eager unknown"]
    if row["speedup_lo"] is not None:
        parts[0] += f" (95 % CI {row['speedup_lo']:.2f}–{row['speedup_hi']:.2f})"
    parts.append(f"{row['decode_tok_s']:.1f} tok/s")
    if row["ppl_delta_pct"] is not None:
        parts.append(f"ppl {row['ppl_delta_pct']:+.2f} %")
    if row["top1_agree"] is not None:
        parts.append(f"top-1 agreement {row['top1_agree']:.3f}")
    return f"`{row['variant']}` on {device}: " + ", ".join(parts)
