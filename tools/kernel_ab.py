"""fused-decode's prefill with two builds of its kernel, paired round after round in one
process: the A/B behind the kernel's "1.05x faster" claims (docs/cpu-performance.md).

    python tools/kernel_ab.py --base HEAD~1 --model gpt2 --rounds 40
    python tools/kernel_ab.py --base-dir /tmp/other_sources --variant fused-decode:int8
    python tools/kernel_ab.py --modules --rounds 30

A is the kernel built from another revision's sources (`--base REV`, read with `git show`,
or a directory holding fused_decode.c, fused_prefill.c, fused_blocks.c and their headers:
`--base-dir`); B the working tree's.  One engine is built (the variant as `gpteval run`
builds it); each round points its prefill (the blocks' call, and the projections and
attention modules) at one library, then the other, the order alternating, and times
`--repeats` prefills of the prompt with each (their median).  Prints both medians, the
median over rounds of A's time over B's (above 1: B faster) with its quartiles, and
whether the two builds' logits are the same bits.

With `--modules`, A and B are the same build: A runs the blocks module by module (the
model's own prefill, each projection and attention a kernel call from Python, the layer
norms, residual adds and cache writes torch ops), B in one call of fused_blocks.c.

On a shared host whose speed moves ±15 % between rounds only such paired ratios mean
anything; the decode step is not swapped (its library also owns the model's state), so
this measures the prefill alone.  The two builds must share the prefill's entry points
(optimizers/fused_prefill.py declares them).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def base_sources(rev: str, into: Path) -> Path:
    """The kernel's sources at git revision `rev`, written to `into`."""
    from optimizers.fused_build import HEADERS, SOURCES

    for path in (*SOURCES, *HEADERS):
        rel = path.relative_to(ROOT).as_posix()
        proc = subprocess.run(["git", "-C", str(ROOT), "show", f"{rev}:{rel}"],
                              capture_output=True, check=False)
        if proc.returncode != 0:
            fail(f"--base {rev}: git show {rev}:{rel} failed "
                 f"({proc.stderr.decode(errors='replace').strip()[:200]}); name a revision "
                 "that has these sources (fused_blocks.c: from the twenty-third session on), "
                 "or pass --base-dir")
        (into / path.name).write_bytes(proc.stdout)
    return into


def fail(message: str) -> None:
    """A user's error: one line, exit code 2."""
    print(message, file=sys.stderr)
    sys.exit(2)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    base = ap.add_mutually_exclusive_group(required=True)
    base.add_argument("--base", help="git revision whose kernel sources build A")
    base.add_argument("--base-dir", type=Path, help="a directory of kernel sources for A")
    base.add_argument("--modules", action="store_true",
                      help="A: the working tree's build with the blocks run module by module "
                      "(the model's own prefill: the path before fused_blocks.c)")
    ap.add_argument("--model", default="gpt2")
    ap.add_argument("--variant", default="fused-decode",
                    help="fused-decode or fused-decode:int8")
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--repeats", type=int, default=3, help="prefills per build a round")
    ap.add_argument("--prompt", type=int, default=128)
    args = ap.parse_args()
    if min(args.rounds, args.repeats, args.prompt) < 1:
        fail("--rounds, --repeats and --prompt take a positive count")
    sys.path.insert(0, str(ROOT))

    import torch
    from variant import build, build_errors

    from gpteval.weights import load_model
    from optimizers import fused_prefill
    from optimizers.fused_build import SOURCE, load_library

    if args.variant not in ("fused-decode", "fused-decode:int8"):
        fail(f"--variant {args.variant}: this tool swaps fused-decode's kernel; use "
             "fused-decode or fused-decode:int8")
    int8 = args.variant.endswith(":int8")
    if args.base_dir is not None and not (args.base_dir / SOURCE.name).is_file():
        fail(f"--base-dir {args.base_dir}: no {SOURCE.name} there; name the directory that "
             "holds the kernel's sources")
    try:
        with tempfile.TemporaryDirectory() as tmp:
            libs = {"B": load_library(SOURCE.parent, int8)}
            libs["A"] = libs["B"] if args.modules else load_library(
                Path(args.base_dir or base_sources(args.base, Path(tmp))), int8)
        loaded = load_model(args.model)
        if args.prompt >= loaded.model.config.n_positions:
            fail(f"--prompt {args.prompt}: {args.model} holds "
                 f"{loaded.model.config.n_positions} positions; take a shorter prompt")
        engine = build(loaded, args.variant, max_len=args.prompt + 1)
    except build_errors() as e:  # a user's error, or a host that cannot build the kernel
        fail(f"{args.variant}: {e}")
    users = [m for m in engine.model.modules() if isinstance(m, fused_prefill.ArenaProjection)]
    users += [b.attn.prefill_attention for b in engine.model.transformer.h
              if b.attn.prefill_attention is not None]
    users.append(engine.prefill_fn)  # ArenaPrefill: the blocks in one call
    paths = {"A": engine.model.prefill if args.modules else engine.prefill_fn,
             "B": engine.prefill_fn}
    ids = torch.randint(0, engine.model.config.vocab_size, (1, args.prompt),
                        generator=torch.Generator().manual_seed(0))

    def prefill(name: str) -> tuple[float, torch.Tensor]:
        for m in users:
            m.lib = libs[name]
        engine.prefill_fn = paths[name]
        engine.reset(1, args.prompt + 1)
        start = time.perf_counter()
        logits = engine.prefill(ids)
        return time.perf_counter() - start, logits

    logits = {name: prefill(name)[1] for name in ("A", "B")}  # warm-up, and the bits
    diff = (logits["A"] - logits["B"]).abs().max().item()
    times: dict[str, list[float]] = {"A": [], "B": []}
    ratios = []
    for r in range(args.rounds):
        got = {}
        for name in ("AB" if r % 2 == 0 else "BA"):
            got[name] = statistics.median(prefill(name)[0] for _ in range(args.repeats))
            times[name].append(got[name])
        ratios.append(got["A"] / got["B"])
    print(f"{args.model} {args.variant}, prefill of {args.prompt}, "
          f"{torch.get_num_threads()} threads, {len(users)} prefill modules swapped")
    print("logits: " + ("the same bits" if diff == 0 else f"max abs diff {diff:.3g}"))
    q = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else ratios * 3
    print(f"A {statistics.median(times['A']) * 1e3:.1f} ms, B "
          f"{statistics.median(times['B']) * 1e3:.1f} ms; A/B median over {args.rounds} "
          f"rounds {statistics.median(ratios):.3f} (quartiles {q[0]:.3f}-{q[2]:.3f})")


if __name__ == "__main__":
    main()
