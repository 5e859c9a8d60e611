"""The compare gate: statistics from raw samples, ratio gates inside one run, quality tolerances."""

import copy

import numpy as np
import pytest

from gpteval.compare import compare
from gpteval.errors import UserError
from gpteval.gates import Gates, RatioGate, load_gates
from gpteval.report.significance import bootstrap_ratio_ci, mann_whitney_u
from tests.test_report_fixtures import make_results


@pytest.fixture(scope="module")
def baseline():
    return make_results(0)


def _rows(result, variant=None, metric=None, verdict=None):
    return [r for r in result.rows if (variant is None or r.variant == variant)
            and (metric is None or r.metric == metric) and (verdict is None or r.verdict == verdict)]


def test_identical_runs_pass(baseline):
    result = compare(baseline, copy.deepcopy(baseline))
    assert result.exit_code == 0 and result.regressed == [] and result.improved == []
    assert _rows(result, "int8-dynamic", "decode_step_ms")  # speed was actually compared


def test_thirty_percent_slower_decode_is_a_named_regression(baseline):
    result = compare(baseline, make_results(1, slow={"int8-dynamic": 1.3}))
    assert result.exit_code == 1
    assert {(r.variant, r.metric) for r in result.regressed} == {("int8-dynamic", "decode_step_ms"),
                                                                ("int8-dynamic", "ttft_ms")}
    line = next(m for m in result.summary_lines() if "decode_step_ms" in m)
    assert line.startswith("REGRESSION bundled/int8-dynamic/cpu: decode_step_ms ")
    assert "+3" in line and "Mann-Whitney" in line  # ~+30 % and the evidence


def test_ppl_five_percent_higher_is_a_regression_naming_ppl(baseline):
    result = compare(baseline, make_results(1, ppl_factor={"int8-dynamic": 1.05}))
    assert [(r.variant, r.metric) for r in result.regressed] == [("int8-dynamic", "ppl"),
                                                                ("int8-dynamic", "bpb")]
    assert result.regressed[0].message() == (
        "REGRESSION bundled/int8-dynamic/cpu: ppl 3.93 → 4.127 (+5.0 %, limit +1 %)")


def test_two_percent_noise_is_not_a_regression(baseline):
    result = compare(baseline, make_results(7, machine_slow=1.02))
    assert result.exit_code == 0, result.summary_lines()


def test_significant_but_small_effect_is_not_a_regression():
    # 3 % slower with almost no noise: Mann-Whitney is sure, but 3 % < the 10 % minimum effect
    base, cur = make_results(0, noise=0.002), make_results(1, noise=0.002, machine_slow=1.03)
    result = compare(base, cur)
    row = _rows(result, "eager", "decode_step_ms")[0]
    assert mann_whitney_u(cur["results"][0]["samples"]["decode_step_ms"],
                          base["results"][0]["samples"]["decode_step_ms"]).p < 1e-6
    assert row.verdict == "ok" and result.exit_code == 0


def test_large_effect_without_statistical_support_is_not_a_regression():
    base, cur = make_results(0, variants=["eager"]), make_results(0, variants=["eager"])
    base["results"][0]["samples"]["decode_step_ms"] = [10.0, 14.0, 10.0, 14.0, 10.0]
    cur["results"][0]["samples"]["decode_step_ms"] = [14.0, 10.0, 14.0, 10.0, 14.0]  # median +40 %
    row = _rows(compare(base, cur), "eager", "decode_step_ms")[0]
    assert row.delta_pct == pytest.approx(40.0) and row.verdict == "ok"


def test_faster_is_improved_not_failed(baseline):
    result = compare(baseline, make_results(1, slow={"bf16": 0.7}))
    assert result.exit_code == 0
    assert {r.metric for r in result.improved if r.variant == "bf16"} == {"decode_step_ms", "ttft_ms"}


def test_ratio_gate_fails_when_int8_speedup_drops_below_min(baseline):
    gates = Gates(absolute=False, ratio=[RatioGate(variant="int8-dynamic", over="eager", min=3.0)])
    assert compare(baseline, make_results(1), gates).exit_code == 0  # ~3.1× holds
    result = compare(baseline, make_results(1, slow={"int8-dynamic": 1.3}), gates)
    assert result.exit_code == 1 and len(result.regressed) == 1
    message = result.regressed[0].message()
    assert "int8-dynamic" in message and "decode_tok_s ratio over eager" in message
    assert "below min 3" in message


def _half_in_a_slow_mode(run, variant, factor=2.5):
    """`variant`'s repeats as on a host that swung into a slower mode for half of them:
    the fast half unchanged, its median (the headline numbers) now a slow repeat's."""
    e = next(e for e in run["results"] if e["variant"] == variant)
    tpots = sorted(e["samples"]["tpot_ms"])
    tpots[len(tpots) // 2:] = [t * factor for t in tpots[len(tpots) // 2:]]
    e["samples"]["tpot_ms"] = tpots
    e["metrics"]["tpot_ms"] = float(np.median(tpots))
    e["metrics"]["decode_tok_s"] = e["latency_protocol"]["batch"] * 1000.0 / e["metrics"]["tpot_ms"]
    return run


def test_a_best_ratio_gate_reads_what_each_variant_did_at_its_fastest(baseline):
    """stat = "best": a variant whose median fell into a slow mode of the host still shows
    its speed at its fastest repeats, while one slow in every repeat still fails."""
    median = Gates(absolute=False, ratio=[RatioGate(variant="int8-dynamic", min=3.0)])
    best = Gates(absolute=False, ratio=[RatioGate(variant="int8-dynamic", min=3.0, stat="best")])
    swung = _half_in_a_slow_mode(make_results(1), "int8-dynamic")
    assert compare(baseline, swung, median).exit_code == 1
    result = compare(baseline, swung, best)
    assert result.exit_code == 0, result.summary_lines()
    row = _rows(result, "int8-dynamic", "decode_tok_s ratio over eager (fastest repeats)")[0]
    e = {x["variant"]: x for x in swung["results"]}
    fastest = [min(e[v]["samples"]["tpot_ms"]) for v in ("int8-dynamic", "eager")]
    assert row.current == pytest.approx(fastest[1] / fastest[0])
    slow = compare(baseline, make_results(1, slow={"int8-dynamic": 1.3}), best)
    assert slow.exit_code == 1 and "below min 3" in slow.regressed[0].message()


def test_ratio_gates_hold_when_the_whole_machine_is_twice_slower(baseline):
    other_machine = make_results(1, machine_slow=2.0)
    other_machine["env"]["cpu"] = "Slower CPU"
    gates = Gates(absolute=False, speedup_tolerance_pct=25,
                  ratio=[RatioGate(variant="int8-dynamic", min=3.0)])
    result = compare(baseline, other_machine, gates)
    assert result.exit_code == 0, result.summary_lines()
    assert len(_rows(result, metric="decode_tok_s ratio over eager")) == 4  # 1 min gate + 3 tolerance
    assert not _rows(result, metric="decode_step_ms")  # absolute speed not compared
    # the same data with absolute comparison on fails, and the note says why
    absolute = compare(baseline, other_machine)
    assert absolute.exit_code == 1 and "different CPUs" in absolute.render_markdown()


def test_same_cpu_name_but_another_generation_is_a_different_cpu(baseline):
    """VMs may name a Zen 4 and a Zen 5 host alike ("AMD EPYC"); family/model tell them apart."""
    same = make_results(1)
    for run, family in ((baseline, 25), (same, 25)):
        run["env"].update(cpu="AMD EPYC", cpu_id=f"AuthenticAMD family {family} model 17 stepping 1")
    assert "different CPUs" not in compare(baseline, same).render_markdown()
    same["env"]["cpu_id"] = "AuthenticAMD family 26 model 2 stepping 0"
    assert "different CPUs" in compare(baseline, same).render_markdown()
    del baseline["env"]["cpu_id"]  # a baseline from before cpu_id: compared by name only
    assert "different CPUs" not in compare(baseline, same).render_markdown()


def test_speedup_tolerance_flags_a_collapsed_speedup(baseline):
    result = compare(baseline, make_results(1, slow={"int8-dynamic": 1.6}),
                     Gates(absolute=False, speedup_tolerance_pct=25))
    assert [(r.variant, r.metric) for r in result.regressed] == [
        ("int8-dynamic", "decode_tok_s ratio over eager")]


def test_missing_or_failed_variant_is_a_regression_and_new_ones_are_reported(baseline):
    without_int8 = ["eager", "bf16", "prune-structured:0.5", "tensorrt", "onnx+ort-int8"]
    current = make_results(1, variants=without_int8)
    result = compare(baseline, current)
    assert [(r.variant, r.verdict) for r in result.regressed] == [("int8-dynamic", "missing")]
    assert "REGRESSION bundled/int8-dynamic/cpu" in result.summary_lines()[0]
    failed = copy.deepcopy(baseline)
    failed["results"][2].update(status="failed", reason="segfault in worker")
    assert "segfault in worker" in compare(baseline, failed).regressed[0].reason
    renamed = copy.deepcopy(baseline)
    renamed["results"][2]["variant"] = "int8-weight-only"
    result = compare(baseline, renamed)
    assert result.added == ["bundled/int8-weight-only/cpu"] and len(result.regressed) == 1


def test_gated_metric_missing_in_current_is_flagged(baseline):
    current = copy.deepcopy(baseline)
    current["results"][0]["metrics"]["ppl"] = None
    assert [(r.variant, r.metric, r.verdict) for r in compare(baseline, current).regressed] == [
        ("eager", "ppl", "missing")]


def test_markdown_lists_regressions_first(baseline):
    text = compare(baseline, make_results(1, ppl_factor={"bf16": 1.05})).render_markdown()
    assert "**2 regressions**" in text
    table = text[text.index("| result |"):]
    assert table.splitlines()[2].startswith("| bundled/bf16/cpu | ppl | 3.905 | 4.1 | +5.0 % | regressed")


def test_a_run_under_host_contention_is_noted_not_failed(baseline):
    current = copy.deepcopy(baseline)
    eager = next(e for e in current["results"] if e["variant"] == "eager" and e["status"] == "ok")
    eager["metrics"]["cpu_steal_pct"] = 23.0
    result = compare(baseline, current)
    assert result.exit_code == 0
    notes = [n for n in result.notes if "contention" in n]
    assert len(notes) == 1 and notes[0].startswith("The current run")
    assert "23 %" in notes[0] and f"{eager['model']}/eager/cpu" in notes[0]
    assert "contention" in result.render_markdown()
    eager["metrics"]["cpu_steal_pct"] = 3.0  # below the threshold: nothing to say
    assert not [n for n in compare(baseline, current).notes if "contention" in n]


# --- statistics -------------------------------------------------------------------------------

SAMPLES = [
    ([1.0, 2.0, 3.0, 4.0, 5.0], [3.0, 4.0, 5.0, 6.0, 7.0, 8.0]),
    ([10.1, 10.1, 10.3, 10.2, 10.1, 10.4, 10.2], [10.1, 10.5, 10.5, 10.3, 10.6, 10.1]),  # ties across sides
    (list(np.random.default_rng(3).normal(10, 1, 40)), list(np.random.default_rng(4).normal(10.5, 1, 35))),
]


@pytest.mark.parametrize("x, y", SAMPLES)
@pytest.mark.parametrize("alternative", ["greater", "less", "two-sided"])
def test_mann_whitney_matches_scipy(x, y, alternative):
    scipy_stats = pytest.importorskip("scipy.stats")
    ours = mann_whitney_u(x, y, alternative)
    ref = scipy_stats.mannwhitneyu(x, y, alternative=alternative, method="asymptotic", use_continuity=True)
    assert ours.p == pytest.approx(ref.pvalue, abs=1e-6)
    assert ours.u == pytest.approx(ref.statistic if alternative != "two-sided" else ours.u)
    if alternative == "greater":
        assert ours.u == pytest.approx(ref.statistic)


def test_mann_whitney_identical_samples_give_p_one():
    assert mann_whitney_u([5.0] * 4, [5.0] * 6).p == 1.0


def test_bootstrap_ratio_ci_is_seeded_and_brackets_the_ratio():
    rng = np.random.default_rng(0)
    a, b = rng.normal(20, 1, 50), rng.normal(10, 0.5, 50)
    lo, hi = bootstrap_ratio_ci(a, b, seed=1)
    assert (lo, hi) == bootstrap_ratio_ci(a, b, seed=1)
    assert lo < np.median(a) / np.median(b) < hi and 1.8 < lo and hi < 2.2


# --- gate files -------------------------------------------------------------------------------


def test_load_gates_reads_toml_and_keeps_default_tolerances(tmp_path):
    path = tmp_path / "gates.toml"
    path.write_text('absolute = false\nspeedup_tolerance_pct = 25\n[quality.ppl]\nrel_pct = 3\n'
                    '[quality.kl_mean]\noff = true\n'
                    '[[ratio]]\nvariant = "int8-dynamic"\nover = "eager"\n'
                    'metric = "decode_tok_s"\nmin = 3.0\n')
    gates = load_gates(path)
    assert gates.absolute is False and gates.ratio[0].min == 3.0
    assert gates.tolerance("ppl").rel_pct == 3 and gates.tolerance("bpb").rel_pct == 1.0
    assert gates.tolerance("kl_mean") is None and gates.tolerance("acc_lambada").abs == 0.02


@pytest.mark.parametrize("text, words", [
    ("absolut = false\n", ["gates.toml", "absolut", "Did you mean: absolute"]),
    ('[quality.pll]\nrel_pct = 1\n', ["gates.toml", "pll", "Did you mean: ppl"]),
    ('[[ratio]]\nvariant = "x"\nminimum = 3\n', ["ratio.0.minimum", "Did you mean: min"]),
    ("absolute = [\n", ["gates.toml", "not valid TOML"]),
    ('speed_metrics = ["decode_ms"]\n', ["decode_ms", "decode_step_ms"]),
    ('[[ratio]]\nvariant = "x"\nmetric = "ppl"\nstat = "best"\n', ["stat 'best'", "ppl"]),
])
def test_bad_gate_files_are_user_errors(tmp_path, text, words):
    path = tmp_path / "gates.toml"
    path.write_text(text)
    with pytest.raises(UserError) as err:
        load_gates(path)
    assert all(w in str(err.value) for w in words), str(err.value)
    assert "\n" not in str(err.value)


def test_missing_gate_file_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="nope.toml"):
        load_gates(tmp_path / "nope.toml")


def test_a_ratio_gate_on_a_variant_neither_run_has_is_a_user_error():
    """A typo in the gate file is exit 2 with the likely name, not a 'missing' regression."""
    base = make_results(0)
    gates = Gates(absolute=False, ratio=[RatioGate(variant="int8-dynamc", over="eager", min=1.0)])
    with pytest.raises(UserError, match="'int8-dynamc'.*Did you mean: int8-dynamic"):
        compare(base, make_results(1), gates)
    # a variant the baseline has and the current run lost is still a regression
    cur = make_results(1, variants=["eager", "bf16"])
    gates = Gates(absolute=False, ratio=[RatioGate(variant="int8-dynamic", over="eager", min=1.0)])
    assert compare(base, cur, gates).exit_code == 1


def test_runs_of_different_setups_are_said_to_differ():
    base, cur = make_results(0), make_results(1)
    assert not any("different setups" in n for n in compare(base, cur).notes)
    for e in cur["results"]:
        if e["status"] == "ok":
            e["latency_protocol"]["prompt_len"] = 64
            e["quality_protocol"]["n_tokens"] = 2048
    (note,) = [n for n in compare(base, cur).notes if "different setups" in n]
    assert "prompt tokens 32 → 64" in note and "tokens scored 4096 → 2048" in note
