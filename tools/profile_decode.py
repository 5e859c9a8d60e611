"""Where one decode step's time goes: the kernels of a variant's decode, by device time
(with --prefill: where one prefill of the prompt goes, the time behind TTFT).

    python tools/profile_decode.py --model gpt2-xl --variant bf16+compile:reduce-overhead \
        --device cuda --batch 1 --prompt 128 --steps 64

Builds the variant exactly as `gpteval run` does (same passes, same engine), times the
decode steps with the harness's own clock, then profiles more steps with torch.profiler
(ONNX Runtime variants: with ORT's own profiler, per operator type) and prints the kernels
ranked by device (or CPU) time per step, with the bytes read per step next to it.  This is
the profile evidence behind the roofline numbers in reports.
"""

from __future__ import annotations

import argparse
import tempfile
from collections import defaultdict
from pathlib import Path

import torch


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="gpt2")
    ap.add_argument("--variant", default="eager")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--prompt", type=int, default=128)
    ap.add_argument("--steps", type=int, default=64)
    ap.add_argument("--top", type=int, default=20)
    ap.add_argument("--prefill", action="store_true",
                    help="profile prefills of the prompt (TTFT) instead of decode steps; "
                         "--steps prefills are profiled")
    args = ap.parse_args()

    # inductor's generated CPU kernels show up in the profile one by one (e.g. each
    # decode GEMM of a compiled variant) instead of as one opaque compiled region
    import torch._inductor.config as inductor_config
    from variant import build

    from gpteval.measure.latency import measure_latency
    from gpteval.weights import load_model

    inductor_config.cpp.enable_kernel_profile = True
    loaded = load_model(args.model)
    max_len = args.prompt + args.steps + 1
    engine = build(loaded, args.variant, args.device, args.batch, max_len)
    lat = measure_latency(engine, args.batch, args.prompt, args.steps + 1, warmup=1,
                          min_repeats=3, min_time_s=0.5)
    nbytes = engine.decode_nbytes()
    print(f"{args.model} {args.variant} {args.device} batch {args.batch}: tpot "
          f"{lat.tpot_ms.median:.3f} ms, {nbytes / 1e6:.1f} MB read per step -> "
          f"{nbytes / lat.tpot_ms.median / 1e6:.1f} GB/s")

    if getattr(engine, "backend", "") == "onnx":
        profile_ort(engine, args)
        return

    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if args.device.startswith("cuda") else [])
    run_profiled = _profiled_calls(engine, args)
    engine.synchronize()
    with profile(activities=acts) as prof:
        run_profiled()
        engine.synchronize()
    cuda = args.device.startswith("cuda")
    per_kernel: dict[str, list[float]] = defaultdict(lambda: [0.0, 0])
    for e in prof.events():
        if cuda and str(getattr(e, "device_type", "")).endswith("CUDA"):
            per_kernel[e.name][0] += e.time_range.elapsed_us()
            per_kernel[e.name][1] += 1
        elif not cuda:
            # self time: each op counted once, and a compiled region split into its kernels
            per_kernel[e.name][0] += e.self_cpu_time_total
            per_kernel[e.name][1] += 1
    total = sum(v[0] for v in per_kernel.values())
    unit = _unit(args)
    print(f"{'device' if cuda else 'cpu'} time in kernels per {unit}: {total / args.steps:.1f} us; "
          f"kernels per {unit}: {sum(v[1] for v in per_kernel.values()) / args.steps:.0f}")
    _print_ranking(per_kernel, args, "kernel")


def _unit(args) -> str:
    return "prefill" if args.prefill else "step"


def _profiled_calls(engine, args):
    """Prefill the prompt once (unprofiled warm-up, and the cache the decode steps extend),
    and return what is profiled: --steps decode steps, or with --prefill --steps prefills."""
    max_len = args.prompt + args.steps + 1
    ids = torch.randint(0, engine.vocab_size, (args.batch, args.prompt))
    engine.reset(args.batch, max_len)
    token = engine.prefill(ids)[:, -1].argmax(-1, keepdim=True)

    def run() -> None:
        nonlocal token
        for _ in range(args.steps):
            if args.prefill:
                engine.reset(args.batch, max_len)
                engine.prefill(ids)
            else:
                token = engine.decode(token).argmax(-1, keepdim=True)
    return run


def _print_ranking(per: dict[str, list[float]], args, what: str) -> None:
    """The `per` name -> [total us, calls] table, per step (or prefill), largest first."""
    total = sum(v[0] for v in per.values())
    unit = _unit(args)
    print(f"{'us/' + unit:>9} {'n/' + unit:>7} {'share':>6}  {what}")
    for name, (us, n) in sorted(per.items(), key=lambda kv: -kv[1][0])[: args.top]:
        print(f"{us / args.steps:9.1f} {n / args.steps:7.1f} {100 * us / total:5.1f}%  {name[:110]}")


def profile_ort(engine, args) -> None:
    """The same ranking for an ONNX Runtime engine, from ORT's own profiler: the session is
    rebuilt with profiling on (same file, options and threads), and node times are summed
    per operator type over the decode steps only (the prefill run is left out), or with
    --prefill over --steps prefills of the prompt."""
    import json

    import onnxruntime as ort

    so = engine.session_options()
    so.enable_profiling = True
    so.profile_file_prefix = str(Path(tempfile.mkdtemp()) / "ort")
    engine.session = ort.InferenceSession(str(engine.model_path), so,
                                          providers=engine.session.get_providers())
    _profiled_calls(engine, args)()
    events = json.loads(Path(engine.session.end_profiling()).read_text())
    runs = sorted((e for e in events if e.get("name") == "model_run"), key=lambda e: e["ts"])
    decode_start = runs[1]["ts"]  # runs[0] is the first prefill (a warm-up with --prefill)
    per_op: dict[str, list[float]] = defaultdict(lambda: [0.0, 0])
    for e in events:
        if (e.get("cat") == "Node" and e["name"].endswith("_kernel_time")
                and e["ts"] >= decode_start):
            op = per_op[e["args"].get("op_name", "?")]
            op[0] += e["dur"]
            op[1] += 1
    total = sum(v[0] for v in per_op.values())
    run_us = sorted(e["dur"] for e in runs[1:])[len(runs[1:]) // 2]
    print(f"ORT per {'prefill' if args.prefill else 'decode step'}: model_run median {run_us:.1f} "
          f"us, in nodes {total / args.steps:.1f} us (the rest is the session's own overhead); "
          f"nodes per {_unit(args)}: {sum(v[1] for v in per_op.values()) / args.steps:.0f}")
    _print_ranking(per_op, args, "operator")


if __name__ == "__main__":
    main()
