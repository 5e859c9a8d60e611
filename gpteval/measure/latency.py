"""Latency of greedy generation: TTFT, TPOT and the single decode steps.

One repeat, for batch B, prompt length P and N new tokens:

    reset(B, P + N)                       (cache setup: not timed)
    mark
    logits = prefill(prompt); token 1 = argmax of the last position's logits
    mark                                  -> ttft
    N - 1 times: logits = decode(token); next token = argmax(logits)
                                          (engine.decode_greedy: an engine may find the
                                          argmax inside its step)
    mark after each                       -> decode steps

Every mark synchronizes device work first (or is a CUDA event), see `timer.Clock`.
The prompt is B rows of P token ids drawn uniformly from the vocabulary with a seeded
generator: latency does not depend on what the tokens mean.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from dataclasses import dataclass, replace

import torch

from ..engine import Engine
from ..errors import UserError
from ..model import greedy_token
from .stats import Stats
from .timer import Clock, repeat


@dataclass
class LatencyResult:
    """Timings of greedy generation, in milliseconds, one sample per repeat (decode steps:
    one sample per step of every repeat)."""

    ttft_ms: Stats
    tpot_ms: Stats
    decode_step_ms: Stats
    batch: int
    prompt_len: int
    new_tokens: int
    warmup: int = 0
    min_repeats: int = 0
    min_time_s: float = 0.0

    @property
    def decode_tok_s(self) -> float:
        """Generated tokens per second after the first token, over the batch:
        B * 1000 / median tpot_ms."""
        return self.batch * 1000.0 / self.tpot_ms.median

    @property
    def prefill_tok_s(self) -> float:
        """Prompt tokens processed per second: B * P * 1000 / median ttft_ms."""
        return self.batch * self.prompt_len * 1000.0 / self.ttft_ms.median

    def pooled_with(self, samples: dict[str, list[float]]) -> LatencyResult:
        """This measurement with earlier raw samples of the same protocol (as_dict's
        "samples") added: the statistics of interleaved rounds taken together."""
        def pool(own: Stats, name: str) -> Stats:
            return Stats(list(samples[name]) + own.samples, own.seed)

        return replace(self, ttft_ms=pool(self.ttft_ms, "ttft_ms"),
                       tpot_ms=pool(self.tpot_ms, "tpot_ms"),
                       decode_step_ms=pool(self.decode_step_ms, "decode_step_ms"))

    def protocol(self) -> dict:
        """How the numbers were taken (results.json "latency_protocol")."""
        return {"batch": self.batch, "prompt_len": self.prompt_len,
                "new_tokens": self.new_tokens, "warmup": self.warmup,
                "min_repeats": self.min_repeats, "min_time_s": self.min_time_s}

    def as_dict(self, include_samples: bool = True) -> dict:
        """Medians as the headline numbers, full statistics, and (optionally) raw samples."""
        series = {"ttft_ms": self.ttft_ms, "tpot_ms": self.tpot_ms,
                  "decode_step_ms": self.decode_step_ms}
        out = {"ttft_ms": self.ttft_ms.median, "tpot_ms": self.tpot_ms.median,
               "decode_tok_s": self.decode_tok_s, "prefill_tok_s": self.prefill_tok_s,
               "latency_protocol": self.protocol(),
               "stats": {k: s.as_dict() for k, s in series.items()}}
        if include_samples:
            out["samples"] = {k: list(s.samples) for k, s in series.items()}
        return out


def greedy_generate(engine: Engine, ids: torch.Tensor, new_tokens: int,
                    after_token: Callable[[], None] | None = None) -> torch.Tensor:
    """Greedy continuation of the prompt ids (B, P): the next token is the argmax of the
    logits.  Returns the N new tokens (B, N).  `after_token()` is called once each token
    exists (latency puts its clock marks there).  The caller resets the engine."""
    logits = engine.prefill(ids)[:, -1, :]
    token = greedy_token(logits)  # (B, 1)
    out = [token]
    if after_token is not None:
        after_token()
    for _ in range(new_tokens - 1):
        _, token = engine.decode_greedy(token)
        out.append(token)
        if after_token is not None:
            after_token()
    return torch.cat(out, dim=1)


def measure_latency(engine: Engine, batch: int, prompt_len: int, new_tokens: int,
                    warmup: int = 1, min_repeats: int = 3, min_time_s: float = 1.0,
                    seed: int = 0) -> LatencyResult:
    """Time greedy generation of `new_tokens` tokens after a `prompt_len`-token prompt for
    `batch` sequences; see the module docstring for what one repeat is.

    ttft_ms: prefill of the prompt until the first token exists.
    tpot_ms: (total - ttft) / (N - 1) per repeat, as in MLPerf.
    decode_step_ms: each single decode step (its own distribution: p50, p90, p99).
    """
    if batch < 1 or prompt_len < 1 or new_tokens < 2:
        raise UserError(f"latency needs batch >= 1, prompt_len >= 1 and new_tokens >= 2 "
                        f"(tpot is undefined for one token), got {batch}, {prompt_len}, "
                        f"{new_tokens}; raise the values in the config")
    if engine.max_positions and prompt_len + new_tokens > engine.max_positions:
        raise UserError(f"prompt_len {prompt_len} + new_tokens {new_tokens} exceeds the "
                        f"model's {engine.max_positions} positions; lower prompt_len or "
                        "new_tokens in the config")
    gen = torch.Generator().manual_seed(seed)
    prompt = torch.randint(0, engine.vocab_size, (batch, prompt_len), generator=gen)
    clock = Clock(engine.device, engine.synchronize)

    def one_repeat() -> list[float]:
        engine.reset(batch, prompt_len + new_tokens)
        engine.synchronize()
        clock.mark()
        greedy_generate(engine, prompt, new_tokens, after_token=clock.mark)
        return clock.read()  # [ttft, step 1, ..., step N-1] in seconds

    runs = repeat(one_repeat, warmup, min_repeats, min_time_s)
    ttft = [r[0] * 1e3 for r in runs]
    tpot = [sum(r[1:]) * 1e3 / (new_tokens - 1) for r in runs]
    steps = [s * 1e3 for r in runs for s in r[1:]]
    return LatencyResult(Stats(ttft, seed), Stats(tpot, seed), Stats(steps, seed), batch,
                         prompt_len, new_tokens, warmup, min_repeats, min_time_s)


def latency_at_batch(engine: Engine, batch: int, protocol: dict, seed: int = 0, n_params: int = 0,
                     ceilings: dict | None = None, shape_warmup: bool = False,
                     head_params: int = 0, earlier: dict | None = None) -> dict:
    """measure_latency at one batch size (prompt_len, new_tokens, warmup, min_repeats and
    min_time_s from `protocol`, the config's [latency]) and what follows from it:
    {"metrics": ttft_ms, tpot_ms, decode_tok_s, prefill_tok_s, bandwidth_gbs, roofline_pct,
    flops_pct, cpu_steal_pct (host steal time while measuring), bandwidth_probe_gbs and
    roofline_paired_pct (below); "stats", "samples": ttft_ms, tpot_ms, decode_step_ms,
    bandwidth_probe_gbs and roofline_round_pct (one per round)}.  `ceilings` holds the
    device's memory_bandwidth_gbs / matmul_gflops (percentages are None without them).
    With ceilings given (a run), on the CPU, each round is paired with the memory bandwidth
    measured right before and after it (bandwidth_probe_gbs, the better of the two): its
    decode bandwidth over that is the round's roofline, roofline_paired_pct the median over
    rounds, and bandwidth_probe_gbs the median probe.
    shape_warmup: one untimed generation at this shape first, for an engine that was warmed
    up (compiled, graph-captured) at another batch size.
    earlier: what an earlier call at this batch size returned (an earlier round); its raw
    samples are pooled with this call's, so every statistic covers all rounds, and
    cpu_steal_pct is the mean over rounds.  The result's "rounds" counts them."""
    from . import ceilings as C
    from . import host

    prompt_len, new_tokens = protocol["prompt_len"], protocol["new_tokens"]
    if shape_warmup:
        engine.reset(batch, prompt_len + new_tokens)
        greedy_generate(engine, torch.zeros(batch, prompt_len, dtype=torch.long), new_tokens)
    # the machine's bandwidth right before and after this round (ceilings given: a run)
    probe_before = _probe(engine.device) if ceilings else None
    ticks = host.cpu_ticks()
    measured = measure_latency(engine, batch, prompt_len, new_tokens, warmup=protocol["warmup"],
                               min_repeats=protocol["min_repeats"],
                               min_time_s=protocol["min_time_s"], seed=seed)
    steal = host.steal_pct(ticks, host.cpu_ticks())
    probe_after = _probe(engine.device) if ceilings else None
    # one decode step reads the weights once for the whole batch
    nbytes = engine.decode_nbytes()
    probes = [p for p in (probe_before, probe_after) if p]
    paired: dict[str, list[float]] = {"bandwidth_probe_gbs": [], "roofline_round_pct": []}
    if probes:
        round_gbs = C.decode_bandwidth_gbs(nbytes, measured.tpot_ms.median)
        paired = {"bandwidth_probe_gbs": [max(probes)],
                  "roofline_round_pct": [C.percent_of(round_gbs, max(probes))]}
    rounds = 1
    if earlier:
        measured = measured.pooled_with(earlier["samples"])
        paired = {k: list(earlier["samples"].get(k, [])) + v for k, v in paired.items()}
        rounds = earlier.get("rounds", 1) + 1
        before = earlier["metrics"].get("cpu_steal_pct")
        steal = None if steal is None or before is None else \
            (before * (rounds - 1) + steal) / rounds
    d = measured.as_dict(include_samples=True)
    m = {k: d[k] for k in ("ttft_ms", "tpot_ms", "decode_tok_s", "prefill_tok_s")}
    m["cpu_steal_pct"] = steal
    bw = (ceilings or {}).get("memory_bandwidth_gbs")
    gflops = C.matmul_ceiling_gflops(ceilings or {}, engine.describe().get("dtype"))
    m["bandwidth_gbs"] = C.decode_bandwidth_gbs(nbytes, m["tpot_ms"])
    m["roofline_pct"] = C.percent_of(m["bandwidth_gbs"], bw) if bw else None
    # each round against the bandwidth measured beside it: on a shared host whose bandwidth
    # swings between modes (here 25-57 GB/s within minutes), a run-wide ceiling and a
    # median over rounds can come from different modes
    m["bandwidth_probe_gbs"] = _median(paired["bandwidth_probe_gbs"])
    m["roofline_paired_pct"] = _median(paired["roofline_round_pct"])
    achieved = C.prefill_gflops(n_params, batch, prompt_len, m["ttft_ms"], head_params)
    m["flops_pct"] = C.percent_of(achieved, gflops) if gflops else None
    return {"metrics": m, "stats": d["stats"], "samples": {**d["samples"], **paired},
            "rounds": rounds}


def _probe(device: str) -> float | None:
    """bandwidth_probe_gbs on the CPU, its buffers left out of peak_rss_mb; None where that
    cannot be done, so the paired roofline is absent, never guessed.  Not on a GPU: the
    probe's 2 GiB would show in peak_device_mb, and a GPU's own memory does not swing with
    a neighbour's load the way a shared host's does."""
    from . import ceilings as C
    from . import memory

    if not device.startswith("cpu"):
        return None
    with memory.excluded_from_peak() as excluded:
        if not excluded:
            return None
        try:
            return C.bandwidth_probe_gbs(device)
        except (RuntimeError, MemoryError):
            return None


def _median(values: list[float]) -> float | None:
    return float(statistics.median(values)) if values else None
