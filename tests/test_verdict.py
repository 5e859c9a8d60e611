"""Random-weight presets take their quality verdict from the same pipeline on a trained model."""

from gpteval.report.verdict import QualityBudget, summary_rows

NOTE = "random weights: perplexity and task accuracy are not meaningful and are not reported"


def _entry(model, variant, tok_s, ppl=None, top1=None, trained=True):
    e = {"model": model, "variant": variant, "device": "cuda", "status": "ok", "reason": None,
         "metrics": {"decode_tok_s": tok_s, "ppl": ppl, "top1_agree": top1}}
    if not trained:
        e["quality_note"] = NOTE
    return e


def _rows():
    results = {"results": [
        _entry("bundled", "eager", 100.0, ppl=3.00, top1=1.0),
        _entry("bundled", "bf16", 110.0, ppl=3.00, top1=1.0),       # within budget
        _entry("bundled", "prune", 200.0, ppl=4.00, top1=0.99),     # ppl +33 %: rejected
        _entry("gpt2-xl", "eager", 10.0, top1=1.0, trained=False),
        _entry("gpt2-xl", "bf16", 40.0, top1=0.90, trained=False),  # flat random logits flip
        _entry("gpt2-xl", "prune", 80.0, top1=0.99, trained=False),
        _entry("gpt2-xl", "fp16", 30.0, top1=0.97, trained=False),  # no trained counterpart
    ]}
    return {(r["model"], r["variant"]): r for r in summary_rows(results, QualityBudget())}


def test_random_weight_preset_borrows_the_trained_verdict():
    rows = _rows()
    bf16 = rows[("gpt2-xl", "bf16")]
    assert bf16["accepted"] is True and "judged on `bundled`" in bf16["verdict_reason"]
    prune = rows[("gpt2-xl", "prune")]
    assert prune["accepted"] is False and "ppl" in prune["verdict_reason"]
    # the recommendation follows: the fastest pipeline accepted on the trained model
    assert bf16["recommended"] and not prune["recommended"]


def test_without_a_trained_counterpart_top1_still_judges():
    fp16 = _rows()[("gpt2-xl", "fp16")]
    assert fp16["accepted"] is True and "top-1 agreement only" in fp16["verdict_reason"]


def test_interrupted_report_names_what_was_not_run_and_the_borrowed_verdict():
    from gpteval.report.markdown import render_markdown

    entries = [_entry("bundled", "eager", 100.0, ppl=3.0, top1=1.0),
               _entry("bundled", "bf16", 110.0, ppl=3.0, top1=1.0),
               _entry("gpt2-xl", "eager", 10.0, top1=1.0, trained=False),
               _entry("gpt2-xl", "bf16", 40.0, top1=0.9, trained=False)]
    run = {"name": "cut", "interrupted": True,
           "config": {"models": ["bundled", "gpt2-xl", "gpt2"], "devices": ["cuda"],
                      "variants": ["eager", "bf16"]}}
    md = render_markdown({"run": run, "results": entries}, plots=False)
    assert "`gpt2` on cuda **not run**" in md and md.count("**not run**") == 1
    assert "`eager`, `bf16`" in md.split("**not run**")[1].splitlines()[0]
    assert "accepted (judged on `bundled`)" in md
