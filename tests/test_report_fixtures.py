"""A realistic results.json built in code, shared by the report and compare tests.

`make_results()` returns a dict in the harness's schema (plan CONTRACTS): a few variants of
one model on CPU, raw samples drawn from a seeded RNG, stats computed from them, one skipped
and one failed variant.  Knobs change one thing at a time (a variant slower, ppl higher, the
whole machine slower) so a test states exactly what differs between baseline and current.
"""

from __future__ import annotations

import copy

import numpy as np

# variant -> (tpot ms, ttft ms, ppl, top1_agree, kl_mean, weights MB, peak RSS MB)
VARIANTS = {
    "eager": (10.0, 30.0, 3.900, 1.000, 0.0, 48.0, 420.0),
    "bf16": (7.5, 24.0, 3.905, 0.990, 0.002, 24.0, 380.0),
    "int8-dynamic": (3.2, 14.0, 3.930, 0.970, 0.010, 13.0, 300.0),
    "prune-structured:0.5": (5.5, 18.0, 4.600, 0.800, 0.300, 25.0, 330.0),
}
SKIPPED = {"tensorrt": "needs CUDA; no GPU on this machine"}
FAILED = {"onnx+ort-int8": "onnxruntime raised: InvalidGraph (see worker log)"}
BATCH, PROMPT, NEW = 1, 32, 17


def _stats(values) -> dict:
    v = np.asarray(values, dtype=float)
    q1, q3 = np.percentile(v, [25, 75])
    med = float(np.median(v))
    return {"n": len(v), "median": med, "mean": float(v.mean()), "stdev": float(v.std(ddof=1)),
            "iqr": float(q3 - q1), "p90": float(np.percentile(v, 90)), "p99": float(np.percentile(v, 99)),
            "min": float(v.min()), "max": float(v.max()), "ci95_lo": med * 0.98, "ci95_hi": med * 1.02}


def _ok(model, variant, device, rng, slow, ppl_factor, random_weights, repeats, noise):
    tpot, ttft, ppl, top1, kl, weights, rss = VARIANTS[variant]
    tpot, ttft = tpot * slow, ttft * slow
    steps = tpot * rng.lognormal(0.0, noise, size=repeats * (NEW - 1))
    tpots = steps.reshape(repeats, NEW - 1).mean(axis=1)
    ttfts = ttft * rng.lognormal(0.0, noise, size=repeats)
    med_tpot, med_ttft = float(np.median(tpots)), float(np.median(ttfts))
    quality = {"ppl": None, "bpb": None, "next_token_acc": None} if random_weights else {
        "ppl": ppl * ppl_factor, "bpb": 1.2 * ppl / 3.9 * ppl_factor,
        "next_token_acc": 0.42 - (ppl - 3.9) * 0.05}
    metrics = {
        "ttft_ms": med_ttft, "tpot_ms": med_tpot, "decode_tok_s": BATCH * 1000.0 / med_tpot,
        "prefill_tok_s": BATCH * PROMPT * 1000.0 / med_ttft, "peak_rss_mb": rss, "peak_device_mb": None,
        "weights_mb": weights, "artifact_mb": None, "optimize_s": 0.5, "bandwidth_gbs": weights / med_tpot,
        "roofline_pct": 100.0 * weights / med_tpot / 12.0, "flops_pct": None, **quality,
        "kl_mean": kl, "top1_agree": top1, "max_abs_logit_diff": kl * 40, "first_divergence": None,
        "acc_cloze": None if random_weights else 0.30 - kl,
    }
    if random_weights:
        metrics["quality_note"] = "random weights: perplexity is not meaningful"
    return {
        "model": model, "variant": variant, "device": device, "status": "ok", "reason": None,
        "engine": {"backend": "torch", "device": device, "notes": [],
                   "dtype": "bfloat16" if variant == "bf16" else "float32"},
        "metrics": metrics,
        "stats": {"ttft_ms": _stats(ttfts), "tpot_ms": _stats(tpots), "decode_step_ms": _stats(steps)},
        "samples": {"ttft_ms": ttfts.tolist(), "tpot_ms": tpots.tolist(), "decode_step_ms": steps.tolist()},
        "quality_protocol": {"context": 64, "stride": 32, "text_sha256": "ab" * 32, "n_tokens": 4096},
        "phases": {"load": {"peak_rss_mb": 200.0, "s": 0.1}},
        "latency_protocol": {"batch": BATCH, "prompt_len": PROMPT, "new_tokens": NEW, "warmup": 1,
                             "min_repeats": 3, "min_time_s": 1.0},
        "duration_s": 3.0,
    }


def make_results(seed=0, *, slow=None, machine_slow=1.0, ppl_factor=None, variants=None, model="bundled",
                 device="cpu", random_weights=False, repeats=12, noise=0.05, name="fixture"):
    """A results dict.  slow: variant -> factor on its timings; machine_slow: factor on every
    timing (another machine); ppl_factor: variant -> factor on its ppl/bpb; variants: names to
    keep (default: all, plus one skipped and one failed)."""
    rng = np.random.default_rng(seed)
    slow, ppl_factor = slow or {}, ppl_factor or {}
    names = list(VARIANTS) + list(SKIPPED) + list(FAILED) if variants is None else list(variants)
    entries = []
    for v in names:
        if v in VARIANTS:
            factor = slow.get(v, 1.0) * machine_slow
            entries.append(_ok(model, v, device, rng, factor, ppl_factor.get(v, 1.0), random_weights,
                               repeats, noise))
        else:
            status = "skipped" if v in SKIPPED else "failed"
            entries.append({"model": model, "variant": v, "device": device, "status": status,
                            "reason": SKIPPED.get(v) or FAILED.get(v), "engine": None, "metrics": {},
                            "stats": {}, "samples": {}, "duration_s": 0.2})
    return {
        "schema_version": 1,
        "run": {"name": name, "config": {"name": name, "seed": 0, "model": {"source": model},
                                         "variants": [{"pipeline": v} for v in names],
                                         "latency": {"batch": BATCH, "new_tokens": NEW}},
                "started": "2026-01-01T00:00:00Z", "finished": "2026-01-01T00:05:00Z",
                "interrupted": False, "gpteval_version": "0.1.0"},
        "env": {"cpu": "Test CPU @ 3GHz", "cores": 2, "threads": 2, "ram_gb": 8.0, "os": "Linux",
                "python": "3.11.7", "packages": {"torch": "2.13.0"}, "git_commit": "abc1234", "gpu": None,
                "ceilings": {"cpu": {"memory_bandwidth_gbs": 12.0, "matmul_gflops": 150.0}}},
        "results": entries,
    }


def merged(*runs):
    """One results dict holding the entries of several (e.g. two models)."""
    out = copy.deepcopy(runs[0])
    for run in runs[1:]:
        out["results"] += copy.deepcopy(run["results"])
    return out


def test_fixture_is_a_valid_results_file():
    from gpteval.report.results import validate

    data = make_results()
    assert validate(data) is None
    assert {e["status"] for e in data["results"]} == {"ok", "skipped", "failed"}
    assert make_results() == data  # seeded: the same call gives the same samples
