"""torch.compile of the decode step (after gpt-fast): the hot loop of generation.

Only `decode` is compiled, with static shapes (`dynamic=False`) and `fullgraph=True`, so a
graph break is an error rather than a silent slowdown; prefill and the teacher-forced
forward stay eager, on CPU with the oneDNN-packed weights `eager` has.  Inductor's
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
        compiled = torch.compile(te.model.decode, mode=self.mode, fullgraph=True,
                                 dynamic=False)
        if te.device.startswith("cuda") and self.mode in ("reduce-overhead", "max-autotune"):
            # both modes record CUDA graphs there, and a graph writes every step's logits
            # into the same buffer: copy them out before the next replay overwrites what
            # the caller still holds
            te.decode_fn = lambda token, pos: compiled(token, pos).clone()
        else:
            te.decode_fn = compiled
        te.backend = "compiled"
        batch, max_len = warmup_shape(ctx, te.max_positions)
        rss_before = rss_mb()
        start = time.perf_counter()
        warm_up(te, batch, max_len)
        seconds = time.perf_counter() - start
        te.notes.append(f"compile: torch.compile(decode, mode='{self.mode}', fullgraph=True, "
                        f"dynamic=False), inductor freezing on; compiled for batch {batch} x "
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
