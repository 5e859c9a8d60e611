"""The harness: expands a study into model × device × variant jobs, runs each job in its
own process (gpteval.worker), and keeps results.json complete after every job.

Everything a user can get wrong is checked before the first job starts (preflight), so
a typo fails in a second, not an hour into a GPU run.  A job that raises, dies, or runs
past its timeout is recorded `failed` with the reason and the run goes on.  SIGINT and
SIGTERM stop the job in progress, keep every finished one, write the report, and the
exit code says the run was interrupted; `--resume` finishes it later.
"""

from __future__ import annotations

import json
import signal
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from . import __version__
from .config import RunConfig
from .errors import UserError
from .report.results import check_writable
from .runner import Job, JobRunner, Parked
from .worker import write_json_atomic

SCHEMA_VERSION = 1
EXIT_INTERRUPTED = {signal.SIGINT: 130, signal.SIGTERM: 143}


@dataclass
class RunState:
    config: RunConfig
    out_dir: Path
    results: dict = field(default_factory=dict)
    interrupted_by: int | None = None


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


# ---- preflight ---------------------------------------------------------------------------
def preflight(cfg: RunConfig) -> dict[str, dict]:
    """Validate everything before anything runs; returns facts per model (n_params,
    n_positions).  Raises UserError with the fix."""
    import torch

    from optimizers import parse_pipeline

    from .data_sources import check_text_length, eval_ids, load_task_items
    from .model import PRESETS, preset_config
    from .weights import load_model

    for v in cfg.variants:
        parse_pipeline(v)
    if "cuda" in cfg.devices and not torch.cuda.is_available():
        raise UserError("--device cuda was asked for but torch sees no GPU; run on a machine "
                        "with CUDA or use --device cpu")
    load_task_items(cfg.quality.tasks)
    facts: dict[str, dict] = {}
    lat, q = cfg.latency, cfg.quality
    for spec in cfg.models:
        if spec in PRESETS:
            mc = preset_config(spec)
            with torch.device("meta"):
                from .model import GPT

                n_params = GPT(mc).num_params()
            tok = load_model("tiny").tokenizer if mc.vocab_size == 256 else None
        else:
            loaded = load_model(spec)
            mc, n_params, tok = loaded.model.config, loaded.model.num_params(), loaded.tokenizer
        need = lat.prompt_len + lat.new_tokens
        if need > mc.n_positions:
            raise UserError(f"model '{spec}' covers {mc.n_positions} positions, but prompt_len "
                            f"({lat.prompt_len}) + new tokens needs {need}; lower "
                            "latency.prompt_len or latency.new_tokens")
        if tok is not None:
            ids, _, _ = eval_ids(q.text, tok)
            check_text_length(q.text, len(ids), min(q.context, mc.n_positions) + 1,
                              f"one perplexity window (quality.context={q.context})")
            check_text_length(q.text, len(ids), lat.prompt_len, f"the prompt (latency.prompt_len="
                              f"{lat.prompt_len})")
        facts[spec] = {"n_params": n_params, "n_positions": mc.n_positions,
                       "head_params": mc.vocab_size * mc.n_embd}
    return facts


def load_for_resume(out_dir: Path, cfg: RunConfig) -> dict:
    path = out_dir / "results.json"
    if not path.is_file():
        raise UserError(f"{out_dir}: holds no gpteval run to resume (no results.json); drop "
                        "--resume or point --out at an earlier run")
    try:
        data = json.loads(path.read_text())
        old_cfg = data["run"]["config"]
    except (OSError, json.JSONDecodeError, KeyError, TypeError):
        raise UserError(f"{path}: not a gpteval results file; drop --resume or choose another "
                        "--out") from None
    try:
        # a run from before a setting existed holds that setting's default
        old_cfg = RunConfig.model_validate(old_cfg).model_dump()
    except ValueError:
        pass
    if old_cfg != cfg.model_dump():
        changed = sorted(k for k in set(old_cfg) | set(cfg.model_dump())
                         if old_cfg.get(k) != cfg.model_dump().get(k))
        raise UserError(f"{out_dir}: the run there used a different config (differs in: "
                        f"{', '.join(changed)}); resume with the same config or use a new --out")
    return data


# ---- the run -----------------------------------------------------------------------------------
def expand(cfg: RunConfig) -> list[Job]:
    return [Job(m, d, v) for m in cfg.models for d in cfg.devices for v in cfg.variants]


def measure_ceilings(devices: list[str], threads: int) -> dict:
    import torch

    from .measure import ceilings

    if threads:
        torch.set_num_threads(threads)
    out = {}
    for d in devices:
        out[d] = ceilings.device_ceilings(d)
    return out


def execute(cfg: RunConfig, out_dir: Path, *, resume: bool = False,
            progress=None, argv: list[str] | None = None) -> RunState:
    """Run the whole study; results.json is rewritten after every job."""
    from .env import fingerprint

    facts = preflight(cfg)
    check_writable(out_dir)
    previous = load_for_resume(out_dir, cfg) if resume else None
    state = RunState(cfg, out_dir)
    if previous:
        state.results = previous
        state.results["run"]["interrupted"] = False
        state.results["run"].setdefault("resumed", []).append(_now())
    else:
        env = fingerprint(cfg.threads)
        env["ceilings"] = measure_ceilings(cfg.devices, cfg.threads)
        state.results = {
            "schema_version": SCHEMA_VERSION,
            "run": {"name": cfg.name, "config": cfg.model_dump(), "started": _now(),
                    "finished": None, "interrupted": False, "gpteval_version": __version__,
                    "argv": argv or []},
            "env": env,
            "results": [],
        }
    results_path = out_dir / "results.json"
    write_json_atomic(results_path, state.results)
    done = {(r["model"], r["variant"], r["device"]) for r in state.results["results"]}
    jobs = [j for j in expand(cfg) if j.key not in done]
    runner = JobRunner(on_phase=lambda ph: progress and progress.phase(ph))
    old_handlers = {}

    def _on_signal(signum, _frame):
        state.interrupted_by = signum
        runner.stop()

    for sig in (signal.SIGINT, signal.SIGTERM):
        old_handlers[sig] = signal.signal(sig, _on_signal)
    parked: list[tuple[Parked, int]] = []  # workers kept for latency rounds, with their Result's index
    try:
        if progress:
            progress.start(len(jobs) + len(done), len(done))
        for i, job in enumerate(jobs):
            if state.interrupted_by:
                break
            if progress:
                progress.begin(job.label)
            payload = {"model": job.model, "device": job.device, "variant": job.variant,
                       "config": cfg.model_dump(),
                       "ceilings": state.results["env"].get("ceilings", {}).get(job.device, {}),
                       "n_params": facts[job.model]["n_params"],
                       "head_params": facts[job.model]["head_params"],
                       "workdir": str(out_dir / ".scratch" / _slug(job) / "artifacts")}
            scratch = out_dir / ".scratch" / _slug(job)
            result, worker = runner.run(job, payload, scratch, cfg.timeout_s,
                                        park=cfg.latency.rounds > 1)
            if worker is None:
                _keep_log_and_clean(scratch, out_dir, job, result)
            if result is None:
                break
            state.results["results"].append(result)
            write_json_atomic(results_path, state.results)
            if worker is not None:
                parked.append((worker, len(state.results["results"]) - 1))
            if progress:
                progress.end(job.label, result)
            if i + 1 == len(jobs) or jobs[i + 1].group != job.group:
                _latency_rounds(parked, cfg, state, results_path, runner, progress)
                _release(parked, out_dir)
    finally:
        _release(parked, out_dir)  # interrupted or failed mid-group: no worker outlives the run
        for sig, h in old_handlers.items():
            signal.signal(sig, h)
        if progress:
            progress.stop()
    if jobs and not state.interrupted_by:
        settle_ceilings(state.results, measure_ceilings(cfg.devices, cfg.threads))
    state.results["run"]["finished"] = _now()
    state.results["run"]["interrupted"] = bool(state.interrupted_by)
    write_json_atomic(results_path, state.results)
    return state


def _latency_rounds(parked: list[tuple[Parked, int]], cfg: RunConfig, state: RunState,
                    results_path: Path, runner: JobRunner, progress) -> None:
    """Rounds 2..R of latency over the parked workers of one model and device, visiting
    them in turn, in serpentine order: round 2 goes backwards through the study's variant
    list, round 3 forwards, and so on.  Neighbours in the list (hf and eager, say) stay
    neighbours in time in every round, however long the variants between them take, and a
    drift of the host's speed that is linear in time cancels out of their pooled ratios.
    results.json is rewritten after every round of every variant."""
    rounds = cfg.latency.rounds
    entries = state.results["results"]
    for r in range(2, rounds + 1):
        active = [p for p in parked if p[0].process.alive()]
        if not active:
            return
        for worker, idx in (active[::-1] if r % 2 == 0 else active):
            if state.interrupted_by:
                return
            if progress:
                progress.begin(worker.job.label)
                progress.phase(f"latency round {r}/{rounds}")
            updated, why_not = worker.round(cfg.timeout_s)
            if updated is not None:
                entries[idx] = updated
            elif why_not:
                entries[idx]["latency_rounds_note"] = why_not
            write_json_atomic(results_path, state.results)


def _release(parked: list[tuple[Parked, int]], out_dir: Path) -> None:
    """End the parked workers and remove their scratch directories."""
    while parked:
        worker, _ = parked.pop()
        worker.close()
        _keep_log_and_clean(worker.scratch, out_dir, worker.job, None)


def settle_ceilings(results: dict, end: dict) -> None:
    """Fold the ceilings measured at the end of a run, and the bandwidth probes taken beside
    its latency rounds, into env["ceilings"] (the best of all, per number) and re-express
    every result's percentages against them, so that all of a run's roofline_pct and
    flops_pct share one ceiling.  Every start and end measurement is kept in
    env["ceilings_measured"]; the best probe as bandwidth_beside_rounds_gbs."""
    from .measure.ceilings import best_of, rebase_percentages

    env = results["env"]
    current = env.setdefault("ceilings", {})
    env.setdefault("ceilings_measured", [dict(current)]).append(end)
    beside = _best_round_probes(results)
    for device in {*end, *beside}:
        old = current.get(device, {})
        new = best_of(old, end.get(device, {}), beside.get(device, {}))
        for r in results["results"]:
            if r["device"] == device and r.get("metrics"):
                rebase_percentages(r["metrics"], old, new, (r.get("engine") or {}).get("dtype"))
        current[device] = new


def _best_round_probes(results: dict) -> dict[str, dict[str, float]]:
    """Per device, the best bandwidth probe taken beside any latency round (samples
    bandwidth_probe_gbs, at every batch size): a measurement of the same machine as the
    ceilings, often at a better moment on a shared host whose bandwidth swings.  As
    {device: {memory_bandwidth_gbs, bandwidth_beside_rounds_gbs}}, for best_of."""
    from .report.results import split_batch

    best: dict[str, float] = {}
    for r in results["results"]:
        for name, values in (r.get("samples") or {}).items():
            if split_batch(name)[0] == "bandwidth_probe_gbs":
                for v in values:
                    if isinstance(v, (int, float)) and v > best.get(r["device"], 0.0):
                        best[r["device"]] = float(v)
    return {d: {"memory_bandwidth_gbs": v, "bandwidth_beside_rounds_gbs": v}
            for d, v in best.items()}


def _keep_log_and_clean(scratch: Path, out_dir: Path, job: Job, result: dict | None) -> None:
    """Exported artifacts are measured by the worker, then removed (a gpt2-xl ONNX export is
    gigabytes); a failed job's stderr is kept under logs/ for diagnosis."""
    import shutil

    err = scratch / "stderr.txt"
    if result is not None and result.get("status") == "failed" and err.is_file():
        (out_dir / "logs").mkdir(exist_ok=True)
        shutil.copyfile(err, out_dir / "logs" / f"{_slug(job)}.stderr.txt")
    shutil.rmtree(scratch, ignore_errors=True)
    try:
        (out_dir / ".scratch").rmdir()
    except OSError:
        pass


def _slug(job: Job) -> str:
    raw = f"{Path(job.model).name or job.model}-{job.variant}-{job.device}"
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in raw)
