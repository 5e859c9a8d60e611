"""The CI gate: compare a current results.json with a baseline and say what regressed.

Rules (each row of the output is one check):

- **speed** (`decode_step_ms`, `ttft_ms`, optionally `tpot_ms`), from the RAW samples of both
  runs: a regression needs a minimum effect (median ≥ `min_effect_pct` % slower, default 10)
  AND statistical support: a one-sided Mann–Whitney U test p < `alpha` (default 0.01), or a
  bootstrap CI (level 1 − 2·alpha) of the ratio of medians entirely above 1.  Improvements
  mirror this.  `absolute = false` turns these off for runs from different machines.
- **ratio** gates hold across machines because both numbers come from ONE run (current):
  `[[ratio]] variant = "int8-dynamic", over = "eager", metric = "decode_tok_s", min = 3.0`;
  with `tolerance_pct` the current ratio may fall at most that far below the baseline's ratio;
  `stat = "best"` takes each variant's fastest repeat instead of its median (a host whose
  bandwidth swings between modes within a run can put one variant's median in the slow one).
  `speedup_tolerance_pct` applies that relative form to every variant's decode_tok_s over eager.
- **quality** (ppl, bpb, top1_agree, kl_mean, next_token_acc, acc_<task>, …) is deterministic:
  regressed when it worsens by more than max(abs, rel_pct % of the baseline).
- a variant ok in the baseline but failed, skipped or absent now is a regression ('missing');
  so is a gated metric the baseline has and the current run lacks.  New variants are listed.
- further batch sizes (latency.batch = [1, 8]): the `_b<B>` forms of the speed metrics
  (decode_step_ms_b8, …) and of ratio-gate metrics (decode_tok_s_b8) are checked like the
  plain ones wherever both runs measured that batch size.

`CompareResult.exit_code` is 0 when nothing regressed, 1 otherwise.  The gate file's schema
and its errors live in gates.py.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field

from gpteval.env import same_cpu
from gpteval.errors import UserError, did_you_mean
from gpteval.gates import Gates, RatioGate, Tolerance
from gpteval.measure import host
from gpteval.report import fmt
from gpteval.report import results as R
from gpteval.report.significance import bootstrap_ratio_ci, mann_whitney_u


@dataclass
class Row:
    """One compared number.  verdict: 'ok' | 'regressed' | 'improved' | 'missing'."""

    model: str
    variant: str
    device: str
    metric: str
    baseline: float | str | None
    current: float | str | None
    delta_pct: float | None
    verdict: str
    reason: str = ""

    @property
    def failed(self) -> bool:
        return self.verdict in ("regressed", "missing")

    def message(self) -> str:
        """'REGRESSION bundled/int8-dynamic/cpu: ppl 3.91 → 4.11 (+5.1 %, limit +1 %)'."""
        where = f"{self.model}/{self.variant}/{self.device}"
        if self.verdict == "missing":
            return f"REGRESSION {where}: {self.metric} missing: {self.reason}"
        change = f"{_value(self.baseline)} → {_value(self.current)}"
        delta = fmt.pct(self.delta_pct, 1) if self.delta_pct is not None else ""
        detail = ", ".join(p for p in (delta, self.reason) if p)
        kind = "REGRESSION" if self.failed else self.verdict.upper()
        return f"{kind} {where}: {self.metric} {change} ({detail})"


def _value(v) -> str:
    return fmt.sig(v, 4) if isinstance(v, float) else fmt.DASH if v is None else str(v)


@dataclass
class CompareResult:
    rows: list[Row]
    gates: Gates
    added: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    names: tuple[str, str] = ("baseline", "current")

    @property
    def regressed(self) -> list[Row]:
        return [r for r in self.rows if r.failed]

    @property
    def improved(self) -> list[Row]:
        return [r for r in self.rows if r.verdict == "improved"]

    @property
    def exit_code(self) -> int:
        return 1 if self.regressed else 0

    def summary_lines(self) -> list[str]:
        """One line per regression (then per improvement): what the CLI prints."""
        return [r.message() for r in self.regressed + self.improved]

    def render_markdown(self) -> str:
        """The comparison as Markdown: verdict, regressions first (one line each), then every row."""
        n = len(self.regressed)
        head = f"**{n} regression{'s' if n != 1 else ''}**" if n else "**No regression**"
        out = [f"# gpteval compare: {self.names[0]} → {self.names[1]}", "",
               f"{head} in {len(self.rows)} checks; {len(self.improved)} improved.", ""]
        if self.summary_lines():
            out += [f"- {fmt.cell(line)}" for line in self.summary_lines()] + [""]
        out += [f"Gate: {_describe(self.gates)}", ""]
        order = {"regressed": 0, "missing": 0, "improved": 1, "ok": 2}
        rows = sorted(self.rows, key=lambda r: order[r.verdict])  # stable: run order within a verdict
        table = [[f"{r.model}/{r.variant}/{r.device}", r.metric, _value(r.baseline), _value(r.current),
                  fmt.pct(r.delta_pct, 1), r.verdict, r.reason] for r in rows]
        if table:
            header = ["result", "metric", "baseline", "current", "Δ", "verdict", "reason"]
            out += [fmt.md_table(header, table, align="llrrrll"), ""]
        if self.added:
            added = ", ".join(f"`{a}`" for a in self.added)
            out += [f"New in the current run (reported, not gated): {added}", ""]
        out += [f"> {note}" for note in self.notes]
        return "\n".join(out).rstrip("\n") + "\n"


def _describe(gates: Gates) -> str:
    parts = []
    if gates.absolute:
        parts.append(f"speed ({', '.join(gates.speed_metrics)}) regresses when the median is ≥ "
                     f"{gates.min_effect_pct:g} % slower and Mann-Whitney p < {gates.alpha:g} or the "
                     f"{100 * (1 - 2 * gates.alpha):g} % bootstrap CI of the median ratio is above 1")
    else:
        parts.append("absolute speed not compared")
    parts.append("quality: " + ", ".join(f"{m} {t.describe(m).removeprefix('limit ')}"
                                         for m, t in gates.quality.items() if not t.off))
    ratios = [f"{g.variant}/{g.over} {g.metric}" for g in gates.ratio]
    if ratios:
        parts.append("ratio gates: " + ", ".join(ratios))
    if gates.speedup_tolerance_pct is not None:
        parts.append(f"speedup over {gates.reference} within {gates.speedup_tolerance_pct:g} % "
                     "of the baseline's")
    return "; ".join(parts) + "."


def _speed_row(k, metric, base: list[float], cur: list[float], gates: Gates) -> Row:
    ratio = statistics.median(cur) / statistics.median(base)
    delta = (ratio - 1.0) * 100.0
    slower = mann_whitney_u(cur, base, "greater").p
    faster = mann_whitney_u(cur, base, "less").p
    lo, hi = bootstrap_ratio_ci(cur, base, seed=gates.seed, level=1.0 - 2.0 * gates.alpha)
    level = 100 * (1 - 2 * gates.alpha)
    evidence = f"Mann-Whitney p={min(slower, faster):.2g}, {level:g} % CI {lo:.3f}–{hi:.3f}"
    verdict = "ok"
    if delta >= gates.min_effect_pct and (slower < gates.alpha or lo > 1.0):
        verdict = "regressed"
    elif delta <= -gates.min_effect_pct and (faster < gates.alpha or hi < 1.0):
        verdict = "improved"
    reason = f"median; limit +{gates.min_effect_pct:g} % and p < {gates.alpha:g}; {evidence}"
    return Row(*k, metric, statistics.median(base), statistics.median(cur), delta, verdict, reason)


def _quality_row(k, metric, b: float, c: float | None, tol: Tolerance) -> Row:
    if c is None:
        return Row(*k, metric, b, None, None, "missing", "measured in baseline, absent in current run")
    worse = (b - c) if R.higher_is_better(metric) else (c - b)
    allowed = tol.allowed(b)
    verdict = "regressed" if worse > allowed + 1e-12 else "improved" if -worse > allowed + 1e-12 else "ok"
    delta = (c / b - 1.0) * 100.0 if b else None
    return Row(*k, metric, b, c, delta, verdict, tol.describe(metric))


def _compare_variant(k, b: dict, c: dict, gates: Gates) -> list[Row]:
    rows = []
    speed = list(gates.speed_metrics) if gates.absolute else []
    speed += [R.at_batch(m, n) for n in R.shared_further_batches(b, c) for m in speed]
    for metric in speed:
        base, cur = R.samples(b, metric), R.samples(c, metric)
        if not base:
            continue
        if not cur:
            batch = R.split_batch(metric)[1]
            why = (c.get("batch_errors") or {}).get(str(batch)) if batch else None
            rows.append(Row(*k, metric, statistics.median(base), None, None, "missing",
                            f"no {metric} samples in the current run" + (f": {why}" if why else "")))
        else:
            rows.append(_speed_row(k, metric, base, cur, gates))
    for metric in R.metric_names([b]):
        tol, base = gates.tolerance(metric), R.metric(b, metric)
        if tol is not None and base is not None:
            rows.append(_quality_row(k, metric, base, R.metric(c, metric), tol))
    return rows


def _ratio_rows(gate: RatioGate, baseline: dict, current: dict) -> list[Row]:
    """One row per model × device of the current run that the gate applies to."""
    def index(run):
        return {R.key(e): e for e in run["results"] if e["status"] == "ok"}

    cur, base = index(current), index(baseline)
    groups = R.order_of_appearance((e["model"], e["device"]) for e in current["results"])
    groups = [(m, d) for m, d in groups if (gate.model in (None, m)) and (gate.device in (None, d))]
    name = f"{gate.metric} ratio over {gate.over}"
    value = R.metric
    if gate.stat == "best":
        name, value = name + " (fastest repeats)", R.best_metric
    rows = []
    for m, d in groups:
        k = (m, gate.variant, d)
        num = value(cur.get(k, {}), gate.metric)
        den = value(cur.get((m, gate.over, d), {}), gate.metric)
        if num is None or not den:
            rows.append(Row(*k, name, None, None, None, "missing",
                            f"needs ok '{gate.variant}' and '{gate.over}' with {gate.metric}"
                            f"{' and its samples' if gate.stat == 'best' else ''} "
                            "in the current run"))
            continue
        ratio, problems = num / den, []
        if gate.min is not None and ratio < gate.min:
            problems.append(f"below min {gate.min:g}")
        if gate.max is not None and ratio > gate.max:
            problems.append(f"above max {gate.max:g}")
        bnum = value(base.get(k, {}), gate.metric)
        bden = value(base.get((m, gate.over, d), {}), gate.metric)
        bratio = bnum / bden if bnum is not None and bden else None
        delta = (ratio / bratio - 1.0) * 100.0 if bratio else None
        tol = gate.tolerance_pct
        if tol is not None and delta is not None:
            worse = -delta if R.higher_is_better(gate.metric) else delta
            if worse > tol:
                problems.append(f"{worse:.1f} % worse than the baseline run's ratio, limit {tol:g} %")
        limits = [f"min {gate.min:g}" if gate.min is not None else "",
                  f"max {gate.max:g}" if gate.max is not None else "",
                  "" if tol is None else f"within {tol:g} % of baseline ratio"]
        reason = "; ".join(problems) if problems else "limit " + ", ".join(x for x in limits if x)
        rows.append(Row(*k, name, bratio, ratio, delta, "regressed" if problems else "ok", reason))
    return rows


def _check_gate_variants(gates: Gates, baseline: dict, current: dict) -> None:
    """A ratio gate naming a variant that neither run has is a typo in the gate file (exit 2),
    not a regression (exit 1)."""
    known = R.order_of_appearance(e["variant"] for run in (baseline, current)
                                  for e in run["results"])
    for gate in gates.ratio:
        for name in (gate.variant, gate.over):
            if name not in known:
                raise UserError(f"gate file: a ratio gate names variant '{name}', which neither "
                                f"run has (they have {', '.join(known)}); fix the name in the "
                                f"gate file.{did_you_mean(name, known)}")


# what a run's setup is, by block: (key, words) of the fields that make two runs comparable
SETUP_FIELDS = (("latency_protocol", (("batch", "batch"), ("prompt_len", "prompt tokens"),
                                      ("new_tokens", "new tokens"))),
                ("quality_protocol", (("context", "quality context"), ("stride", "stride"),
                                      ("n_tokens", "tokens scored"),
                                      ("text_sha256", "evaluation text (sha256)"))))


def _setup_notes(baseline: dict, current: dict) -> list[str]:
    """A note naming each setup field (prompt length, tokens scored, ...) whose value differs
    between the runs: their numbers then differ by the setup as well as by the code."""
    def values(run, block, key):  # a text's hash shortened as the report shows it
        return {str(e[block][key])[:12] for e in run["results"]
                if e["status"] == "ok" and (e.get(block) or {}).get(key) is not None}

    differs = []
    for block, fields in SETUP_FIELDS:
        for key, words in fields:
            b, c = values(baseline, block, key), values(current, block, key)
            if b and c and b != c:
                differs.append(f"{words} {', '.join(sorted(b))} → {', '.join(sorted(c))}")
    if not differs:
        return []
    return [(f"The runs measured different setups ({'; '.join(differs)}): their differences "
             "are partly the setup's, not the code's; compare runs of the same config.")]


def compare(baseline: dict, current: dict, gates: Gates | None = None) -> CompareResult:
    """Every check of `gates` on current against baseline (both validated results dicts)."""
    gates = gates or Gates()
    _check_gate_variants(gates, baseline, current)
    base = {R.key(e): e for e in baseline["results"]}
    cur = {R.key(e): e for e in current["results"]}
    rows: list[Row] = []
    for k, b in base.items():
        if b["status"] != "ok":
            continue
        c = cur.get(k)
        if c is None or c["status"] != "ok":
            now = "absent from the current run" if c is None else f"{c['status']} in the current run"
            why = f": {c.get('reason')}" if c is not None and c.get("reason") else ""
            rows.append(Row(*k, "status", "ok", c["status"] if c else None, None, "missing",
                            f"ok in baseline, {now}{why}"))
            continue
        rows += _compare_variant(k, b, c, gates)
    ratio_gates = list(gates.ratio)
    if gates.speedup_tolerance_pct is not None:  # every variant ok in both runs, over the reference
        for (m, v, d), c in cur.items():
            if v == gates.reference or c["status"] != "ok" or base.get((m, v, d), {}).get("status") != "ok":
                continue
            for n in [None] + R.shared_further_batches(base[(m, v, d)], c):  # and every batch size
                metric = "decode_tok_s" if n is None else R.at_batch("decode_tok_s", n)
                ratio_gates.append(RatioGate(model=m, variant=v, device=d, over=gates.reference,
                                             metric=metric, tolerance_pct=gates.speedup_tolerance_pct))
    for gate in ratio_gates:
        rows += _ratio_rows(gate, baseline, current)
    added = [R.label(k) for k, c in cur.items()
             if c["status"] == "ok" and (k not in base or base[k]["status"] != "ok")]
    notes = []
    dropped = R.order_of_appearance(
        n for k, b in base.items() if b["status"] == "ok" and cur.get(k, {}).get("status") == "ok"
        for n in R.further_batches(b) if n not in R.further_batches(cur[k]))
    if dropped:
        notes.append(f"Batch size {', '.join(map(str, dropped))} was measured in the baseline only: "
                     "not compared.")
    notes += _setup_notes(baseline, current)
    if not gates.absolute:
        notes.append("Absolute speed was not compared (absolute = false): only ratios inside each run.")
    elif not same_cpu(baseline.get("env"), current.get("env")):
        notes.append("The runs come from different CPUs; absolute speed differences may be the machine's. "
                     "For cross-machine CI set absolute = false and gate on [[ratio]].")
    for which, run in (("baseline", baseline), ("current", current)):
        high = host.disturbed(run["results"])
        if high:
            entry, pct = max(high, key=lambda ep: ep[1])
            notes.append(f"The {which} run was measured under host contention: CPU steal time "
                         f"above {host.DISTURBED_STEAL_PCT:.0f} % during {len(high)} variant(s), "
                         f"up to {pct:.0f} % ({R.label(entry)}); speed differences involving "
                         "them may be the host's.")
    names = ((baseline.get("run") or {}).get("name") or "baseline",
             (current.get("run") or {}).get("name") or "current")
    return CompareResult(rows, gates, added, notes, names)
