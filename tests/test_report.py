"""Reports: verdicts, Markdown determinism, CSV for pandas, benchmark JSON, plots, load errors."""

import copy
import json
import sys

import pytest

from gpteval.errors import UserError
from gpteval.report import (
    QualityBudget,
    console_table,
    load_results,
    render_markdown,
    summary_rows,
    write_reports,
    write_tensorboard,
)
from gpteval.report.fmt import to_toml
from gpteval.report.verdict import judge, recommendations
from tests.test_report_fixtures import make_results, merged


@pytest.fixture(scope="module")
def results():
    """Two models: a trained one (ppl measured) and one with random weights (ppl null)."""
    return merged(make_results(0), make_results(1, model="gpt2-random", random_weights=True,
                                                variants=["eager", "int8-dynamic", "bf16"]))


def _entry(variant, ppl, top1, tok_s=100.0, status="ok"):
    return {"model": "m", "variant": variant, "device": "cpu", "status": status, "reason": None,
            "metrics": {"ppl": ppl, "top1_agree": top1, "decode_tok_s": tok_s}}


def test_verdict_on_hand_made_numbers():
    budget, eager = QualityBudget(ppl_pct=2.0, top1_min=0.95), _entry("eager", 10.0, 1.0)
    assert judge(_entry("a", 10.15, 0.99), eager, budget).accepted is True  # +1.5 %
    rejected = judge(_entry("b", 10.25, 0.99), eager, budget)  # +2.5 %
    assert rejected.accepted is False and rejected.reason == "ppl +2.50 % > +2 %"
    assert judge(_entry("c", 10.0, 0.94), eager, budget).reason == "top-1 0.940 < 0.95"
    assert judge(_entry("c", 10.0, 0.94), eager, QualityBudget(top1_min=0.9)).accepted is True
    random = judge(_entry("d", None, 0.96), _entry("eager", None, 1.0), budget)
    assert random.accepted is True and "top-1 agreement only" in random.reason
    assert judge(_entry("e", 10.0, 1.0, status="failed"), eager, budget).accepted is None
    assert judge(_entry("f", 10.0, 1.0), None, budget).label == "unjudged"


def test_recommendation_is_the_fastest_accepted_variant():
    entries = [_entry("eager", 10.0, 1.0, 100.0), _entry("fast-bad", 12.0, 0.8, 500.0),
               _entry("ok", 10.1, 0.99, 200.0), _entry("slow-ok", 10.0, 1.0, 150.0)]
    rows = summary_rows({"results": entries})
    assert [r["variant"] for r in rows] == ["fast-bad", "ok", "slow-ok", "eager"]  # by speed
    assert [r["variant"] for r in rows if r["recommended"]] == ["ok"]
    assert recommendations(rows)[("m", "cpu")]["variant"] == "ok"


def test_budget_rejects_impossible_values():
    with pytest.raises(UserError, match="top1_min"):
        QualityBudget(top1_min=1.5)
    with pytest.raises(UserError, match="ppl_pct"):
        QualityBudget(ppl_pct=-1)


def test_speedup_ci_brackets_the_speedup_and_is_deterministic(results):
    rows = {(r["model"], r["variant"]): r for r in summary_rows(results)}
    int8 = rows[("bundled", "int8-dynamic")]
    assert int8["speedup_lo"] < int8["speedup"] < int8["speedup_hi"]
    assert 2.8 < int8["speedup"] < 3.5  # fixture: 10 ms / 3.2 ms per token
    assert rows[("bundled", "eager")]["speedup"] == 1.0
    assert summary_rows(results)[0]["speedup_lo"] == summary_rows(results)[0]["speedup_lo"]


def test_markdown_is_deterministic_and_complete(results):
    text = render_markdown(results)
    reloaded = json.loads(json.dumps(results))
    assert render_markdown(reloaded) == text  # from results.json alone, byte for byte
    assert text.startswith("# gpteval report: fixture\n")
    assert "**Recommendation (bundled, cpu):** `int8-dynamic` on cpu: 3." in text
    assert "**Recommendation (gpt2-random, cpu):** `int8-dynamic`" in text
    assert "`bundled/tensorrt/cpu` **skipped**: needs CUDA; no GPU on this machine" in text
    assert "`bundled/onnx+ort-int8/cpu` **failed**: onnxruntime raised" in text
    assert "accepted (top-1 only)" in text  # random weights judged without ppl, and said so
    assert "rejected: ppl +17.95 % > +2 %; top-1 0.800 < 0.95" in text
    for term in ("**ppl**", "**KL (kl_mean)**", "**top-1 (top1_agree)**", "**roofline %**", "**tpot_ms**"):
        assert term in text
    assert "![pareto](plots/pareto.png)" in text and "| ceilings (cpu) |" in text
    assert '```toml\nname = "fixture"\nseed = 0\n' in text
    # speed order inside a model: int8 (fastest) first, not-ok variants last
    bundled = text[text.index("## Model `bundled`"):text.index("## Model `gpt2-random`")]
    table = [line for line in bundled.splitlines() if line.startswith("| ")][2:]
    order = [line.split(" | ")[0].strip("|* ") for line in table]
    assert order == ["int8-dynamic", "prune-structured:0.5", "bf16", "eager", "onnx+ort-int8", "tensorrt"]


def test_markdown_changes_with_the_budget(results):
    strict = render_markdown(results, QualityBudget(ppl_pct=0.5))
    assert "**Recommendation (bundled, cpu):** `bf16`" in strict  # int8's +0.77 % is now too much


def test_write_reports_writes_every_file(results, tmp_path):
    pd = pytest.importorskip("pandas")
    paths = write_reports(results, tmp_path / "run")
    names = sorted(p.relative_to(tmp_path / "run").as_posix() for p in paths)
    assert names == ["benchmark-smaller.json", "benchmark.json", "plots/latency.png", "plots/memory.png",
                     "plots/pareto.png", "report.md", "results.csv", "results.json"]
    assert json.loads((tmp_path / "run/results.json").read_text()) == results
    assert (tmp_path / "run/report.md").read_text() == render_markdown(results)

    df = pd.read_csv(tmp_path / "run/results.csv")
    assert len(df) == 9  # 6 bundled + 3 random, one row per model × variant × device
    for column in ("model", "variant", "device", "status", "decode_tok_s", "ttft_ms", "tpot_ms",
                   "peak_rss_mb", "weights_mb", "ppl", "kl_mean", "top1_agree", "speedup",
                   "speedup_ci95_lo", "verdict"):
        assert column in df.columns
    int8 = df[(df.model == "bundled") & (df.variant == "int8-dynamic")].iloc[0]
    entry = next(e for e in results["results"] if e["variant"] == "int8-dynamic")
    assert int8.decode_tok_s == entry["metrics"]["decode_tok_s"] and bool(int8.recommended)
    assert df[df.variant == "tensorrt"].iloc[0].status == "skipped"
    assert pd.isna(df[df.model == "gpt2-random"].ppl).all()

    bigger = json.loads((tmp_path / "run/benchmark.json").read_text())
    smaller = json.loads((tmp_path / "run/benchmark-smaller.json").read_text())
    for item in bigger + smaller:
        assert isinstance(item["name"], str) and isinstance(item["unit"], str)
        assert isinstance(item["value"], (int, float))
    assert "bundled/int8-dynamic/cpu decode_tok_s" in {b["name"] for b in bigger}
    assert {"bundled/int8-dynamic/cpu ttft_ms", "bundled/eager/cpu ppl"} <= {s["name"] for s in smaller}
    assert not any(b["name"].endswith(" ttft_ms") for b in bigger)  # one direction per file
    assert not any("tensorrt" in b["name"] for b in bigger + smaller)

    for png in ("pareto", "latency", "memory"):
        data = (tmp_path / f"run/plots/{png}.png").read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and b"Software" not in data and b"matplotlib" not in data
    from gpteval.report.plots import plot_pareto

    again = plot_pareto(results, tmp_path / "again.png")
    assert again.read_bytes() == (tmp_path / "run/plots/pareto.png").read_bytes()


def test_report_without_plots_has_no_plot_links(tmp_path):
    paths = write_reports(make_results(0, variants=["eager"]), tmp_path, plots=False)
    assert not (tmp_path / "plots").exists() and len(paths) == 5
    assert "plots/" not in (tmp_path / "report.md").read_text()


def test_console_table_shows_rows_and_recommendation(results):
    from rich.console import Console

    console = Console(record=True, width=160)
    console.print(console_table(results))
    out = console.export_text()
    assert "prune-structured:0.5" in out and "rejected" in out and "skipped" in out
    assert "Recommendation (bundled, cpu): int8-dynamic on cpu: 3." in out


@pytest.mark.parametrize("content, words", [
    (None, ["missing.json", "no such results file"]),
    ("{not json", ["bad.json", "not valid JSON", "line 1"]),
    ('{"schema_version": 99, "results": []}',
     ["bad.json", "schema_version is 99", "reads schema_version 1"]),
    ('{"results": []}', ["bad.json", "no schema_version"]),
    ('{"schema_version": 1, "results": [{"model": "m"}]}', ["bad.json", "results[0] has no 'variant'"]),
    (('{"schema_version": 1, "results": '
     '[{"model": "m", "variant": "v", "device": "cpu", "status": "done"}]}'),
     ["bad.json", "status 'done'"]),
])
def test_load_results_errors_name_the_file(tmp_path, content, words):
    path = tmp_path / ("missing.json" if content is None else "bad.json")
    if content is not None:
        path.write_text(content)
    with pytest.raises(UserError) as err:
        load_results(path)
    assert all(w in str(err.value) for w in words), str(err.value)


def test_load_results_accepts_a_file_or_its_run_folder(tmp_path):
    data = make_results(0, variants=["eager", "tensorrt"])
    (tmp_path / "results.json").write_text(json.dumps(data))
    assert load_results(tmp_path / "results.json") == data == load_results(tmp_path)


def test_config_toml_round_trips():
    import tomllib

    config = {"name": "x", "seed": 0, "ratio": 1.5, "on": True, "devices": ["cpu"], "unset": None,
              "latency": {"batch": 1, "nested": {"k": "v \"q\""}}, "runs": [{"a": 1}, {"a": 2}]}
    expected = copy.deepcopy(config)
    del expected["unset"]
    assert tomllib.loads(to_toml(config)) == expected
    assert "# unset = (unset)" in to_toml(config)


def test_tensorboard_missing_is_a_user_error(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    with pytest.raises(UserError, match="pip install tensorboard"):
        write_tensorboard(make_results(0, variants=["eager"]), tmp_path)


def test_tensorboard_export_writes_scalars_and_histograms(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    write_tensorboard(make_results(0, variants=["eager", "int8-dynamic", "tensorrt"]), tmp_path / "tb")
    events = EventAccumulator(str(tmp_path / "tb"))
    events.Reload()
    scalars = events.Tags()["scalars"]
    assert "decode_tok_s/bundled/cpu/int8-dynamic" in scalars and not any("tensorrt" in s for s in scalars)
    assert events.Scalars("ppl/bundled/cpu/eager")[0].value == pytest.approx(3.9)
    assert "decode_step_ms/bundled/cpu/eager" in events.Tags()["histograms"]


def test_importing_the_report_package_stays_light():
    import subprocess

    code = ("import sys, gpteval.report, gpteval.compare; "
            "heavy = ('matplotlib', 'rich', 'torch', 'pandas', 'scipy'); "
            "print(sorted(m for m in heavy if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_the_roofline_cell_adds_the_paired_roofline_where_it_was_measured():
    from gpteval.report.markdown import _roofline_cell

    assert _roofline_cell({"roofline_pct": 71.26, "roofline_paired_pct": 84.04}) == \
        "71.3 (84.0 paired)"
    assert _roofline_cell({"roofline_pct": 71.26, "roofline_paired_pct": None}) == "71.3"


def test_quality_section_shows_every_quality_metric_and_task(results):
    """The summary has room for ppl, top-1 and KL; bpb, next-token and task accuracy, the
    largest logit difference and the first greedy divergence are in their own table."""
    text = render_markdown(results)
    section = text[text.index("## Quality and fidelity"):text.index("## Plots")]
    lines = [line for line in section.splitlines() if line.startswith("| ")]
    assert lines[0] == ("| model | variant | device | ppl | bpb | next-token acc | top-1 | KL | "
                        "max abs logit diff | acc_cloze | first divergence |")
    rows = {tuple(c.strip() for c in line.strip("|").split("|")[:3]): line for line in lines[2:]}
    bundled = next(e for e in results["results"]
                   if (e["model"], e["variant"]) == ("bundled", "eager"))["metrics"]
    eager = rows[("bundled", "eager", "cpu")]
    assert f"| {bundled['bpb']:.4f} |" in eager and f"| {bundled['acc_cloze']:.3f} |" in eager
    assert eager.endswith("| none |")  # generation agreed throughout
    # random weights: no ppl, bpb or task accuracy, fidelity still measured
    random_row = rows[("gpt2-random", "eager", "cpu")]
    assert random_row.split("|")[4].strip() == "—" and random_row.endswith("| none |")
    # failed and skipped variants have no row
    assert ("bundled", "tensorrt", "cpu") not in rows


def test_labels_of_close_pareto_points_are_stacked():
    from gpteval.report.plots import label_offsets

    # two variants at the same quality and speed, one far away
    offsets = label_offsets([(0.0, 1000.0), (0.01, 1005.0), (5.0, 3000.0)])
    assert offsets[0] == 4.0 and offsets[1] == offsets[0] - 10.0 and offsets[2] == 4.0
    assert label_offsets([(1.0, 1.0)]) == [4.0]
