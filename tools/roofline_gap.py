"""How far a variant's decode is from the bandwidth ceiling, and which part of the gap no
kernel could close: the evidence behind `roofline_pct` / `roofline_paired_pct` on the CPU.

    python tools/roofline_gap.py --model gpt2 --variant compile:max-autotune --rounds 12

Builds the variant as `gpteval run` does, then, round after round, measures side by side:

probe    the harness's bandwidth probes right before and after the round's latency
         measurement (`bandwidth_probe_gbs`: best of repeated reductions and copies over one
         256 MiB buffer), the better of the two: what `roofline_paired_pct` holds it to;
buffer   one reduction over a single buffer as large as a decode step's reads (median of 3);
tensors  the same reduction over the decode's own large tensors (weight matrices, KV cache;
         all but <1 % of its bytes) one by one, in the model's order (median of 3): how fast
         a plain kernel that reads each tensor once, a call per tensor, streams them;
decode   `bandwidth_gbs`: decode_nbytes / median TPOT.
The probes and the decode come from the harness's own `latency_at_batch`.

decode/tensors is what the variant's kernels and per-step overhead leave on the table;
tensors/probe is what reading the model tensor by tensor, in a typical moment rather than
the probe's best one, costs before any kernel runs.  On a shared host the bandwidth moves
between rounds, so only ratios within a round mean something.  A model whose
decode reads fit in the last-level cache (`tiny`: 13 MB) reads faster than the probe: use
`gpt2` or larger.  Meant for float32 variants
(an ONNX Runtime engine is held to the reference model's tensors, which its export shares).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

LARGE_BYTES = 256 * 1024


def decode_tensors(engine, reference) -> list[torch.Tensor]:
    """The tensors one decode step reads: the engine's own model's parameters and buffers
    when it is a PyTorch engine (its KV cache included), else the reference model's, whose
    sizes an fp32 export shares.  Embedding tables that are only gathered (a row per token)
    are left out, as in `decode_nbytes`.  A dense weight dropped for its oneDNN-packed copy
    (a storage-less stand-in, gpteval/packed.py) is read as a fresh tensor of its size."""
    from gpteval.packed import is_stand_in

    model = getattr(engine, "model", None)
    if not isinstance(model, torch.nn.Module):
        model = reference
    arena = getattr(getattr(engine, "decoder", None), "arena", None)
    if arena is not None:  # fused-decode reads its own copy, one buffer, not the model's
        caches = [b for n, b in model.named_buffers() if ".kv_cache." in n]
        # read as floats (a byte tensor would be summed by another, slower reduction)
        return [arena.buffer.view(torch.float32), *caches]
    wte, wpe = model.transformer.wte.weight, model.transformer.wpe.weight
    gathered = {wpe.data_ptr()}
    if getattr(model.lm_head, "weight", None) is not wte:
        gathered.add(wte.data_ptr())
    seen, out = set(), []
    for t in list(model.parameters()) + list(model.buffers()):
        if id(t) in seen or t.data_ptr() in gathered or not t.numel():
            continue
        seen.add(id(t))
        out.append(torch.ones(t.shape, dtype=t.dtype) if is_stand_in(t) else t.detach())
    return out


def _median_gbs(fn, nbytes: int, repeats: int = 3) -> float:
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        rates.append(nbytes / (time.perf_counter() - start) / 1e9)
    return statistics.median(rates)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="gpt2")
    ap.add_argument("--variant", default="compile:max-autotune")
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--prompt", type=int, default=128)
    ap.add_argument("--steps", type=int, default=64, help="decode steps per latency repeat")
    args = ap.parse_args()

    from variant import build

    from gpteval.hugepages import huge_page_empty
    from gpteval.measure.ceilings import bandwidth_probe_gbs
    from gpteval.measure.latency import latency_at_batch
    from gpteval.weights import load_model

    loaded = load_model(args.model)
    max_len = args.prompt + args.steps + 1
    engine = build(loaded, args.variant, max_len=max_len)
    engine.reset(1, max_len)  # the KV cache the decode reads exists from here on
    every = decode_tensors(engine, loaded.model)
    # biases and norms: a call each would time Python and thread start-up, not memory
    tensors = [t for t in every if t.numel() * t.element_size() >= LARGE_BYTES]
    nbytes = engine.decode_nbytes()
    tensor_bytes = sum(t.numel() * t.element_size() for t in tensors)
    buffer = huge_page_empty(max(tensor_bytes // 4, 1)).fill_(1.0)  # as the probe's

    def one_by_one() -> None:
        for t in tensors:
            t.sum()

    print(f"{args.model} {args.variant}: a decode step reads {nbytes / 1e6:.1f} MB; "
          f"{len(every)} tensors, the {len(tensors)} of at least {LARGE_BYTES // 1024} KiB "
          f"hold {tensor_bytes / 1e6:.1f} MB; "
          f"{torch.get_num_threads()} threads")
    print(f"{'round':>5} {'probe':>7} {'buffer':>7} {'tensors':>7} {'decode':>7}  GB/s   "
          f"{'dec/probe':>9} {'dec/tens':>8} {'tens/probe':>10}")
    ratios: dict[str, list[float]] = {"dec/probe": [], "dec/tens": [], "tens/probe": []}
    protocol = {"prompt_len": args.prompt, "new_tokens": args.steps + 1, "warmup": 1,
                "min_repeats": 2, "min_time_s": 0.5}
    # a measured ceiling makes latency_at_batch probe beside the round, as in a run, so the
    # round is paired exactly as roofline_paired_pct pairs it (the better of the two probes)
    ceilings = {"memory_bandwidth_gbs": bandwidth_probe_gbs()}
    for r in range(args.rounds):
        in_buffer = _median_gbs(lambda: buffer.sum(), buffer.numel() * 4)
        in_tensors = _median_gbs(one_by_one, tensor_bytes)
        m = latency_at_batch(engine, 1, protocol, ceilings=ceilings)["metrics"]
        decode, probe = m["bandwidth_gbs"], m["bandwidth_probe_gbs"]
        if probe is None:
            raise SystemExit("no bandwidth probe could be taken here (it needs Linux's "
                             "/proc/self/clear_refs to keep its buffers out of peak RSS)")
        row = {"dec/probe": decode / probe, "dec/tens": decode / in_tensors,
               "tens/probe": in_tensors / probe}
        for k, v in row.items():
            ratios[k].append(v)
        print(f"{r:5d} {probe:7.1f} {in_buffer:7.1f} {in_tensors:7.1f} {decode:7.1f}         "
              f"{row['dec/probe']:9.2f} {row['dec/tens']:8.2f} {row['tens/probe']:10.2f}",
              flush=True)
    print("median over rounds: " + ", ".join(f"{k} {statistics.median(v):.2f}"
                                             for k, v in ratios.items()))


if __name__ == "__main__":
    main()
