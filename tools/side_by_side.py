"""Several variants' decode speed measured side by side in one process, round after round:
the comparison a run's pooled medians cannot give on a host whose bandwidth switches modes
between rounds (the Zen 5 CI hosts: ~90 GB/s or ~50 within minutes).

    python tools/side_by_side.py --model gpt2 --variants fused-decode:int8,onnx+ort-int4 --rounds 8

Builds each variant as `gpteval run` does, then each round runs the harness's latency
protocol (`latency_at_batch`, batch 1, with its bandwidth probes right before and after)
for every variant in turn, the order reversed every other round so that neither always goes
first.  Prints per round each variant's decode tok/s, TTFT and the probe beside it, then
per variant the median over rounds of its tok/s over the first variant's in the same round,
and of the first variant's TTFT over its own (both: above 1 is faster than the first).
"""

from __future__ import annotations

import argparse
import statistics
import sys


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="gpt2")
    ap.add_argument("--variants", default="fused-decode:int8,fused-decode",
                    help="comma-separated pipelines; ratios are against the first")
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--prompt", type=int, default=128)
    ap.add_argument("--new", type=int, default=128, help="new tokens per generation")
    args = ap.parse_args()

    from variant import build, build_errors

    from gpteval.measure.ceilings import bandwidth_probe_gbs
    from gpteval.measure.latency import latency_at_batch
    from gpteval.weights import load_model

    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    max_len = args.prompt + args.new
    engines = {}
    for v in variants:
        try:  # a fresh model each: passes change it in place
            engines[v] = build(load_model(args.model), v, max_len=max_len)
        except build_errors() as e:
            print(f"{v}: {e}", file=sys.stderr)
            sys.exit(2)
    protocol = {"prompt_len": args.prompt, "new_tokens": args.new, "warmup": 1,
                "min_repeats": 3, "min_time_s": 1.0}
    # a measured ceiling makes latency_at_batch probe beside each round, as in a run
    ceilings = {"memory_bandwidth_gbs": bandwidth_probe_gbs()}
    ratios: dict[str, list[float]] = {v: [] for v in variants}
    ttft_ratios: dict[str, list[float]] = {v: [] for v in variants}
    for r in range(args.rounds):
        order = variants if r % 2 == 0 else variants[::-1]
        tok_s, ttft, probe = {}, {}, {}
        for v in order:
            m = latency_at_batch(engines[v], 1, protocol, ceilings=ceilings)["metrics"]
            tok_s[v], ttft[v] = m["decode_tok_s"], m["ttft_ms"]
            probe[v] = m.get("bandwidth_probe_gbs")
        for v in variants:
            ratios[v].append(tok_s[v] / tok_s[variants[0]])
            ttft_ratios[v].append(ttft[variants[0]] / ttft[v])
        print(f"round {r}: " + "  ".join(
            f"{v} {tok_s[v]:.1f} tok/s, TTFT {ttft[v]:.1f} ms "
            f"(probe {probe[v] or float('nan'):.1f} GB/s)" for v in variants), flush=True)
    print(f"median over rounds, against {variants[0]}: " + ", ".join(
        f"{v} {statistics.median(x):.3f}" for v, x in ratios.items()))
    print(f"TTFT, median over rounds of {variants[0]}'s over each: " + ", ".join(
        f"{v} {statistics.median(x):.3f}" for v, x in ttft_ratios.items()))


if __name__ == "__main__":
    main()
