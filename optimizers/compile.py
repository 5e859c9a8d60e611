"""torch.compile of the decode step (after gpt-fast): the hot loop of generation.

Only `decode` is compiled, with static shapes (`dynamic=False`) and `fullgraph=True`, so a
graph break is an error rather than a silent slowdown; prefill stays eager, on CPU with
the oneDNN-packed weights `eager` has.  The teacher-forced forward (fidelity, perplexity,
tasks) runs through the compiled step a token at a time (`forward_by_decode`), so the
quality columns are the compiled graph's and not eager's (a window longer than the
warm-up's cache compiles the step once more, for that cache).  Inductor's
freezing is switched on: weights become constants that it can fold and pre-pack, which is
valid because inference never changes them.

Compilation happens at the first call, so the pass runs a warm-up generation itself and
the compile time lands in `optimize_s`.  The graph is specialised to the cache shape
(batch, max_len) of that warm-up; another shape compiles again at its first call.
"""

from __future__ import annotations

import time

import torch

from gpteval.engine import Engine
from gpteval.measure.memory import rss_mb

from .base import Pass, PassContext, PassError, pack_for_cpu, require_torch_engine

MODES = ("default", "reduce-overhead", "max-autotune")
WARMUP_PROMPT = 8
WARMUP_DECODES = 3


class Compile(Pass):
    name = "compile"
    summary = "torch.compile (inductor) of the decode step, static shapes, frozen weights"
    param = "mode: default, reduce-overhead (CUDA graphs) or max-autotune"
    default = "default"
    produces = "compiled"
    tolerance = 1e-4  # measured 1.8e-7: same math, fused

    def parse(self, arg: str | None) -> None:
        if arg not in MODES:
            raise PassError(f"'{self.name}:{arg}': choose a mode from {', '.join(MODES)}, "
                            f"e.g. '{self.name}:default'")
        self.mode = arg

    def available(self, device: str) -> str | None:
        if self.mode == "reduce-overhead" and not device.startswith("cuda"):
            return ("compile:reduce-overhead records CUDA graphs; on CPU it is the same as "
                    "compile:default, so it is not measured twice")
        return super().available(device)

    def apply(self, engine: Engine, ctx: PassContext) -> Engine:
        import torch._inductor.config as inductor_config

        te = require_torch_engine(engine, self.name)
        if any(hasattr(m, "_packed_params") for m in te.model.modules()):
            raise PassError("compile cannot trace torch.ao's dynamic-quantized layers (what "
                            "int8-dynamic uses on CPU); use 'int8-weight-only+compile', or "
                            "int8-dynamic without compile")
        # prefill stays eager: it gets the CPU inference layout eager has; packed before
        # compiling, so the compiled step's guards see the modules as they will stay.  The
        # lm_head keeps its tied (V, C) weight (the graph lays out its own copy) and gets a
        # packed copy too, without TransposedHead's extra dense table: unpacked, GPT-2's
        # prefill measured 147 ms against eager's 138 in one process; packed, the two
        # give the same logits bit for bit and the same time within noise
        pack_for_cpu(te, self.name, drop_dense=False, head_as_is=True)
        inductor_config.freezing = True  # this process only runs inference from here on
        batch, max_len = warmup_shape(ctx, te.max_positions)
        rss_before = rss_mb()
        start = time.perf_counter()
        options = cpu_gemm_options(te.device, self.mode)
        try:
            self._compile(te, options)
            warm_up(te, batch, max_len)  # compiles here, at the first call
        except Exception as exc:  # retried with inductor's own choices, noted
            if options is None:
                raise
            te.notes.append(f"compile: inductor's CPP GEMM templates alone failed "
                            f"({type(exc).__name__}); compiled with every GEMM backend")
            options = None
            self._compile(te, options)
            warm_up(te, batch, max_len)
        seconds = time.perf_counter() - start
        te.backend = "compiled"
        te.forward_by_decode = True
        te.notes.append("compile: teacher-forced quality (fidelity, perplexity, tasks) runs "
                        "through the compiled step a token at a time; prefill stays eager")
        te.notes.append(f"compile: torch.compile(decode, mode='{self.mode}', fullgraph=True, "
                        f"dynamic=False{_describe(options)}), inductor freezing on; compiled "
                        f"for batch {batch} x "
                        f"cache {max_len} in {seconds:.1f} s (another shape compiles again)")
        rss_after = rss_mb()
        if te.device.startswith("cpu") and rss_before is not None and rss_after is not None:
            # freezing folds the weights into the compiled graph as its own constants (laid
            # out for its kernels): memory that weights MB cannot see, peak RSS does
            te.notes.append(f"compile: resident memory grew by {rss_after - rss_before:.0f} MB "
                            "while compiling and warming up (inductor's frozen weight "
                            "constants, generated code and what compiling left allocated; "
                            "not in weights MB, in peak RSS)")
        return te

    def _compile(self, te, options: dict | None) -> None:
        """te.decode_fn: the compiled decode step (compiled at its first call)."""
        kw = {"options": options} if options else {"mode": self.mode}
        compiled = torch.compile(te.model.decode, fullgraph=True, dynamic=False, **kw)
        if te.device.startswith("cuda") and self.mode in ("reduce-overhead", "max-autotune"):
            # both modes record CUDA graphs there, and a graph writes every step's logits
            # into the same buffer: copy them out before the next replay overwrites what
            # the caller still holds
            te.decode_fn = lambda token, pos: compiled(token, pos).clone()
        else:
            te.decode_fn = compiled


def cpu_gemm_options(device: str, mode: str) -> dict | None:
    """max-autotune on the CPU with inductor's CPP GEMM templates as the only GEMM backend
    (options for torch.compile), or None: the mode as inductor defines it.

    max-autotune times each candidate kernel once, at compile time, and keeps the fastest.
    For decode's matrix-vector products the CPP template won every time we timed the two
    (gpt2, fp32 and bf16, batch 1 and 8: 1.2-4.5x faster than MKL/oneDNN, the lm_head
    4.96 vs 7.24 ms), except once, in a busy moment, by 0.4 % (7.47 vs 7.50 ms), and that
    build then decoded with MKL's kernel, which streams at half the CPP template's rate.
    So the choice is not left to one noisy timing.  torch.compile takes options or a mode,
    not both: the options spell the mode out."""
    if mode != "max-autotune" or not device.startswith("cpu"):
        return None
    from torch._inductor import list_mode_options

    return {**list_mode_options(mode), "max_autotune_gemm_backends": "CPP"}


def _describe(options: dict | None) -> str:
    if not options:
        return ""
    return f", GEMM backends {options['max_autotune_gemm_backends']}"


def warmup_shape(ctx: PassContext, max_positions: int) -> tuple[int, int]:
    """(batch, cache length) the harness will measure with, when the context says; else a
    batch-1 guess."""
    shape = getattr(ctx, "warmup_shape", None)  # optional: set by the harness when known
    if shape:
        return int(shape[0]), min(int(shape[1]), max_positions)
    return 1, min(WARMUP_PROMPT + WARMUP_DECODES + 1, max_positions)


def warm_up(engine: Engine, batch: int, max_len: int) -> None:
    """One short greedy generation: triggers compilation (and CUDA-graph recording)."""
    prompt = min(WARMUP_PROMPT, max_len - 1)
    ids = torch.zeros(batch, prompt, dtype=torch.long)
    engine.reset(batch, max_len)
    logits = engine.prefill(ids)[:, -1]
    for _ in range(min(WARMUP_DECODES, max_len - prompt)):
        logits = engine.decode(logits.argmax(dim=-1, keepdim=True))
    engine.synchronize()
