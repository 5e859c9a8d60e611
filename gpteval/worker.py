"""One variant, measured in its own process: `python -m gpteval.worker JOB.json RESULT.json`.

The harness starts this module once per model × variant × device, so peak memory is the
variant's own, nothing leaks between variants, and a crash, a kill or a hang is contained.
Phases (load → reference → optimize → measure) are announced on stdout as JSON lines for
the progress display; the Result is written to RESULT.json at the end.  A Python error
is recorded as `failed` with its reason; a death without a result is diagnosed by the
harness from the exit status.
"""

from __future__ import annotations

import json
import math
import sys
import time
import traceback
from pathlib import Path

import torch

from .config import as_batches
from .data_sources import eval_ids, load_task_items
from .engine import TorchEngine
from .errors import UserError
from .weights import load_model

MB = 2 ** 20  # every *_mb in results.json is MiB, the unit /proc and /usr/bin/time use


def _announce(phase: str) -> None:
    _message({"phase": phase})


class NonFiniteLogits(RuntimeError):
    pass


def _check_finite(logits: torch.Tensor, where: str) -> None:
    if not torch.isfinite(logits).all():
        bad = (~torch.isfinite(logits)).sum().item()
        raise NonFiniteLogits(f"{where} logits contain {bad} NaN/inf values; the variant's "
                              "numbers would be meaningless")


def _windows(ids: torch.Tensor, context: int, limit: int) -> list[torch.Tensor]:
    ids = ids[:limit]
    return [ids[i:i + context] for i in range(0, len(ids) - 1, context) if len(ids[i:i + context]) > 1]


def _greedy(engine, prompt: torch.Tensor, n: int, cache_len: int) -> list[int]:
    """n greedy tokens after prompt (B, P), first sequence, through the engine's own
    prefill/decode path.  The cache has the shape latency uses, so a compiled decode step
    is not compiled a second time for another shape."""
    from .measure.latency import greedy_generate

    engine.reset(prompt.shape[0], cache_len)
    return greedy_generate(engine, prompt, n)[0].tolist()


def _store_latency(result: dict, batch: int, primary: bool, measured: dict) -> None:
    """latency_at_batch's numbers into the Result: the primary batch size under the plain
    names, every further one as `_b<B>`, in metrics, stats and samples."""
    from .report.results import at_batch

    for block in ("metrics", "stats", "samples"):
        result[block].update({(k if primary else at_batch(k, batch)): v
                              for k, v in measured[block].items()})


def _batch_latency(engine, batch: int, job: dict, **kw) -> dict:
    """latency_at_batch with the job's protocol, seed, model size and device ceilings."""
    from .measure.latency import latency_at_batch

    cfg = job["config"]
    return latency_at_batch(engine, batch, cfg["latency"], cfg.get("seed", 0),
                            job.get("n_params") or 0, job.get("ceilings"),
                            head_params=job.get("head_params") or 0, **kw)


def _further_batches(engine, batches: list[int], job: dict, result: dict,
                     measured: dict[int, dict]) -> None:
    """Latency at every batch size after the primary one.  One untimed generation at the
    new shape comes first (what compile-style passes did at optimize time for the primary
    shape).  A batch size that fails is recorded in result["batch_errors"]; the variant's
    other numbers stand."""
    for b in batches:
        try:
            measured[b] = _batch_latency(engine, b, job, shape_warmup=True)
        except Exception as exc:  # noqa: BLE001 - recorded with its reason, never lost
            result.setdefault("batch_errors", {})[str(b)] = failure_reason(exc)
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            continue
        _store_latency(result, b, False, measured[b])


def run_job(job: dict, keep: dict | None = None) -> dict:
    """Measure one variant; returns the Result dict (status ok | skipped | failed).
    `keep`, when given, receives the measured engine and its latency per batch size, for
    later latency rounds (`serve_rounds`)."""
    from optimizers import PassContext, parse_pipeline
    from optimizers.base import PassSkipped, inference_layout

    from .measure import fidelity, memory, quality

    cfg = job["config"]
    device, variant, model_spec = job["device"], job["variant"], job["model"]
    if cfg.get("threads"):
        torch.set_num_threads(int(cfg["threads"]))
    torch.manual_seed(cfg.get("seed", 0))
    result = {"model": model_spec, "variant": variant, "device": device, "status": "ok",
              "reason": None, "metrics": {}, "stats": {}, "samples": {}, "phases": {}}
    t_start = time.perf_counter()
    passes = parse_pipeline(variant)
    for p in passes:
        reason = p.available(device)
        if reason:
            result.update(status="skipped", reason=f"{p.spec}: {reason}")
            return result

    # ---- load -------------------------------------------------------------------------
    _announce("load")
    memory.reset_peak_rss()
    t0 = time.perf_counter()
    loaded = load_model(model_spec, seed=cfg.get("seed", 0))
    ref = TorchEngine(loaded.model, device)
    q = cfg["quality"]
    text_ids, n_bytes, text_sha = eval_ids(q["text"], loaded.tokenizer)
    result["phases"]["load"] = {"s": time.perf_counter() - t0, "peak_rss_mb": memory.peak_rss_mb()}

    # ---- reference logits (eager fp32, same weights, same device) -----------------------
    _announce("reference")
    fid_windows = _windows(text_ids, min(q["context"], ref.max_positions), q["fidelity_tokens"])
    ref_logits = [ref.forward(w[None]) for w in fid_windows]
    lat = cfg["latency"]
    batches = as_batches(lat["batch"])  # the first is the primary batch size
    prompt = text_ids[: lat["prompt_len"]].repeat(batches[0], 1)
    cache_len = lat["prompt_len"] + lat["new_tokens"]
    n_greedy = min(q["generate_tokens"], lat["new_tokens"])
    ref_tokens = _greedy(ref, prompt, n_greedy, cache_len)

    # ---- optimize ---------------------------------------------------------------------
    _announce("optimize")
    memory.reset_peak_rss()
    memory.reset_peak_device(device)
    workdir = Path(job["workdir"])
    workdir.mkdir(parents=True, exist_ok=True)
    train_ids = None
    if loaded.trained:
        def train_ids():
            from . import corpus

            return torch.tensor(loaded.tokenizer.encode(corpus.split_text("train")),
                                dtype=torch.long)
    ctx = PassContext(device=device, workdir=workdir, seed=cfg.get("seed", 0),
                      train_ids=train_ids, trained=loaded.trained,
                      warmup_shape=(batches[0], cache_len))
    # passes mutate the model in place: give them their own copy, keep the reference intact
    import copy

    engine = TorchEngine(copy.deepcopy(loaded.model), device)
    t0 = time.perf_counter()
    try:
        for p in passes:
            engine = p.apply(engine, ctx)
        engine = inference_layout(engine)
    except PassSkipped as skip:
        result.update(status="skipped", reason=f"{p.spec}: {skip}")
        return result
    engine.synchronize()
    optimize_s = time.perf_counter() - t0
    result["phases"]["optimize"] = {"s": optimize_s, "peak_rss_mb": memory.peak_rss_mb()}
    result["engine"] = engine.describe()
    # the reference model stays only as its logits: every variant, eager included, is
    # measured holding just its own engine
    del ref
    loaded.model = None  # type: ignore[assignment]
    import gc

    gc.collect()

    # ---- measure ----------------------------------------------------------------------
    _announce("measure")
    memory.reset_peak_rss()
    memory.reset_peak_device(device)
    t0 = time.perf_counter()
    m = result["metrics"]
    cand = [engine.forward(w[None]) for w in fid_windows]
    for c in cand:
        _check_finite(c, "teacher-forced")
    fid = fidelity.fidelity_metrics(torch.cat([r[0] for r in ref_logits]),
                                    torch.cat([c[0] for c in cand]))
    del cand
    m.update(fid)
    tokens = _greedy(engine, prompt, n_greedy, cache_len)
    m["first_divergence"] = fidelity.first_divergence(ref_tokens, tokens)

    # latency: the primary batch size under the plain names, every further one as `_b<B>`
    round_started, round_t0 = time.time(), time.perf_counter()
    measured = {batches[0]: _batch_latency(engine, batches[0], job)}
    _store_latency(result, batches[0], True, measured[batches[0]])
    # rounds: how many interleaved rounds the numbers pool (serve_rounds adds the later ones)
    result["latency_protocol"] = {**lat, "batch": batches[0], "batches": batches, "rounds": 1}
    # before the further batch sizes: nbytes() counts the engine's KV cache at its current shape
    m["weights_mb"] = engine.nbytes() / MB
    files = [Path(f) for f in engine.artifact_files()]
    m["artifact_mb"] = sum(f.stat().st_size for f in files if f.is_file()) / MB if files else None
    m["optimize_s"] = optimize_s
    _further_batches(engine, batches[1:], job, result, measured)
    result["latency_rounds"] = [_round_record(round_started, round_t0, result)]

    # ---- quality (trained weights only) -----------------------------------------------
    if loaded.trained:
        ids = text_ids[: q["max_tokens"]] if q["max_tokens"] else text_ids
        # bits per byte over the bytes of the tokens scored: with max_tokens, a text's prefix
        scored_bytes = n_bytes if len(ids) == len(text_ids) else loaded.tokenizer.n_bytes(ids)
        # a context beyond the model's positions is scored at the model's (recorded so)
        context = min(q["context"], engine.max_positions or q["context"])
        stride = min(q["stride"], context)
        result["quality_protocol"] = {"context": context, "stride": stride, "text": q["text"],
                                      "text_sha256": text_sha, "n_tokens": len(ids),
                                      "n_bytes": scored_bytes}
        qr = quality.perplexity(engine, ids, context, stride, n_bytes=scored_bytes)
        if not math.isfinite(qr.ppl):
            raise NonFiniteLogits("perplexity is not finite: the variant's logits overflow")
        m.update({"ppl": qr.ppl, "bpb": qr.bpb, "next_token_acc": qr.next_token_acc})
        for task_name, (kind, items) in load_task_items(q["tasks"]).items():
            items = items[: q.get("task_items") or None]
            if kind == "cloze":
                m[f"acc_{task_name}"] = quality.cloze_accuracy(engine, loaded.tokenizer, items)
            else:
                mc = quality.multiple_choice(engine, loaded.tokenizer, items)
                m[f"acc_{task_name}"] = mc["acc"]
                m[f"acc_norm_{task_name}"] = mc["acc_norm"]
    else:
        m.update({"ppl": None, "bpb": None, "next_token_acc": None})
        result["quality_note"] = ("random weights: perplexity and task accuracy are not "
                                  "meaningful and are not reported")
    m["peak_rss_mb"] = memory.peak_rss_mb()
    dev = memory.peak_device_mb(device)
    m["peak_device_mb"] = dev["allocated"] if dev else None
    if dev:
        result["peak_device_reserved_mb"] = dev["reserved"]
    result["phases"]["measure"] = {"s": time.perf_counter() - t0, "peak_rss_mb": m["peak_rss_mb"]}
    result["duration_s"] = time.perf_counter() - t_start
    if keep is not None:
        keep.update(engine=engine, measured=measured)
    return result


def _round_record(started_unix: float, t0: float, result: dict) -> dict:
    """When one latency round ran (wall clock, comparable across workers), for how long, and
    how many repeats it added at the primary batch size: the pooled samples are the rounds'
    repeats in order, so each round's own numbers can be recovered from results.json."""
    earlier = sum(r["repeats"] for r in result.get("latency_rounds", []))
    return {"started_unix_s": round(started_unix, 3), "s": round(time.perf_counter() - t0, 3),
            "repeats": len(result["samples"]["tpot_ms"]) - earlier}


# ---- interleaved latency rounds -------------------------------------------------------------
# With latency.rounds > 1 the worker does not exit after its Result: it stays parked, engine
# loaded, and measures one more latency round each time the harness writes "round" to its
# stdin, so that the harness can visit every variant of a model in turn (as asv's
# --interleave-processes does) and a slow drift of the host's load lands on all variants alike.
PARK_MIN_AVAILABLE = 0.25  # keep a quarter of host memory free for the variants still to run


def park_refusal(device: str) -> str | None:
    """Why this worker should not stay parked for later rounds, or None: parked workers
    hold their engine in memory while the other variants are measured."""
    from .measure import memory

    total, available = memory.host_memory_mb()
    if total and available is not None and available < PARK_MIN_AVAILABLE * total:
        return (f"only {available:.0f} of {total:.0f} MiB host memory free after this variant; "
                "it was not kept loaded for later rounds")
    if device.startswith("cuda") and torch.cuda.is_available():
        free, total_dev = torch.cuda.mem_get_info(torch.device(device))
        if free < PARK_MIN_AVAILABLE * total_dev:
            return (f"only {free / MB:.0f} of {total_dev / MB:.0f} MiB GPU memory free after this "
                    "variant; it was not kept loaded for later rounds")
    return None


def latency_round(job: dict, result: dict, kept: dict) -> None:
    """One more latency round at every batch size measured so far, pooled into the Result."""
    started, t0 = time.time(), time.perf_counter()
    for i, (b, earlier) in enumerate(kept["measured"].items()):
        kept["measured"][b] = _batch_latency(kept["engine"], b, job, earlier=earlier)
        _store_latency(result, b, i == 0, kept["measured"][b])
    result["latency_protocol"]["rounds"] += 1
    result["latency_rounds"].append(_round_record(started, t0, result))


def serve_rounds(job: dict, result: dict, kept: dict, out_path: Path, commands=None) -> None:
    """Stay parked and run a latency round per "round" line on stdin, rewriting RESULT.json
    after each; any other line or the end of stdin ends the worker.  Messages on stdout
    tell the harness where things stand: parked, round_done, round_failed, not_parked."""
    _return_free_memory()
    refusal = park_refusal(job["device"])
    if refusal:
        result["latency_rounds_note"] = refusal
        write_json_atomic(out_path, result)
        _message({"not_parked": refusal})
        return
    _message({"parked": True})
    for line in commands if commands is not None else sys.stdin:
        if line.strip() != "round":
            return
        try:
            latency_round(job, result, kept)
        except Exception as exc:  # noqa: BLE001 - the earlier rounds' numbers stand
            result["latency_rounds_note"] = f"a later latency round failed: {failure_reason(exc)}"
            write_json_atomic(out_path, result)
            _message({"round_failed": result["latency_rounds_note"]})
            return
        write_json_atomic(out_path, result)
        _message({"round_done": result["latency_protocol"]["rounds"]})


def _return_free_memory() -> None:
    """Give what the finished measurement freed (reference logits, quality batches) back to
    the OS before parking: glibc keeps freed heap pages, and a parked worker's resident
    memory is what the variants still to run must do without."""
    import ctypes
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass  # not glibc: nothing to trim


def _message(msg: dict) -> None:
    print(json.dumps(msg), flush=True)


def failure_reason(exc: BaseException) -> str:
    if isinstance(exc, UserError):
        return str(exc)
    oom = getattr(torch.cuda, "OutOfMemoryError", None)
    if oom is not None and isinstance(exc, oom):
        return f"out of memory on CUDA: {str(exc).splitlines()[0] if str(exc) else ''}"
    if isinstance(exc, NonFiniteLogits):
        return str(exc)
    tb = traceback.extract_tb(exc.__traceback__)
    where = f" at {Path(tb[-1].filename).name}:{tb[-1].lineno}" if tb else ""
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}{where}: {first}"[:500]


def write_json_atomic(path: Path, data: dict) -> None:
    """Strict JSON (NaN/inf become null), written atomically: temp file + rename, so a crash
    at any moment leaves the previous complete file."""
    from .report.results import write_text_atomic

    text = json.dumps(_sanitize(data), indent=2, allow_nan=False, default=_json_default)
    write_text_atomic(path, text + "\n")


def _json_default(o):
    if hasattr(o, "item"):
        return o.item()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serializable: {type(o).__name__}")


def _sanitize(obj):
    """NaN/inf become null: results.json stays strict JSON."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _sanitize(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_sanitize(v) for v in obj]
    return obj


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    job_path, out_path = Path(argv[0]), Path(argv[1])
    job = json.loads(job_path.read_text())
    base = {"model": job["model"], "variant": job["variant"], "device": job["device"]}
    kept: dict = {}
    try:
        result = run_job(job, keep=kept)
    except BaseException as exc:
        if isinstance(exc, KeyboardInterrupt):
            raise
        result = {**base, "status": "failed", "reason": failure_reason(exc), "metrics": {}}
        print(traceback.format_exc(), file=sys.stderr, flush=True)
        kept.clear()
    write_json_atomic(out_path, result)
    if kept and job["config"]["latency"].get("rounds", 1) > 1:
        serve_rounds(job, result, kept, out_path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
