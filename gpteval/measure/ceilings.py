"""What the machine can do at best, measured quickly, and how close a variant comes.

Batch-1 decode reads every weight once per token, so it is bound by memory bandwidth;
prefill is a stack of matmuls, bound by arithmetic throughput (as gpt-fast reports).
The ceilings are measured, not taken from a data sheet: the best of a few repeats of
large reads (GEMV, reduction, copy) and of a square matmul (through torch, and on the CPU
also oneDNN's packed path the reference model uses), with torch's threads.

Units: GB/s and GFLOP/s are decimal (1e9).
"""

from __future__ import annotations

import torch

from ..hugepages import huge_page_empty
from .timer import repeat_timed

# a handful of repeats after one warm-up: the best of them is the ceiling
_WARMUP, _MIN_COUNT, _MIN_TIME_S, _MAX_COUNT = 1, 3, 0.3, 20


def _sync(device: str):
    if device.startswith("cuda"):
        return lambda: torch.cuda.synchronize(device)
    return lambda: None


def _best_gbs(fn, nbytes: int, device: str, min_time_s: float = _MIN_TIME_S) -> float:
    times = repeat_timed(fn, _sync(device), _WARMUP, _MIN_COUNT, min_time_s, _MAX_COUNT,
                         device=device)
    return nbytes / min(times) / 1e9


def bandwidth_kernels_gbs(device: str = "cpu", nbytes: int | None = None,
                          kernels: tuple[str, ...] = ("gemv", "sum", "copy"),
                          min_time_s: float = _MIN_TIME_S) -> dict[str, float]:
    """Read bandwidth in GB/s through three kernels over `nbytes` of fp32 (default 256 MiB on
    the CPU, 1 GiB on CUDA: several times the last-level cache either way):

    gemv: (1, k) @ (k, 4096), the access pattern of batch-1 decode, counts the matrix read;
    sum:  a full reduction, counts the tensor read;
    copy: a device-to-device copy, counts bytes read plus bytes written (STREAM's count).

    Libraries reach different fractions of the hardware with each (torch's CPU GEMV stays
    well under ONNX Runtime's and inductor's kernels; cuBLAS's fp32 GEMV under a CUDA copy),
    so the ceiling is the best of them.  On the CPU the buffers are on huge pages, which
    stream faster than 4 KiB pages (gpteval/hugepages.py)."""
    if nbytes is None:
        nbytes = 2 ** 30 if device.startswith("cuda") else 256 * 2 ** 20
    cols = 4096
    rows = max(nbytes // 4 // cols, 1)
    w = _streamed_buffer(rows, cols, device).fill_(1.0)
    read = rows * cols * 4
    runs: dict[str, tuple] = {}  # kernel -> (call, bytes it moves)
    if "gemv" in kernels:
        x = torch.ones(1, rows, dtype=torch.float32, device=device)
        runs["gemv"] = (lambda: x @ w, read)
    if "sum" in kernels:
        runs["sum"] = (lambda: w.sum(), read)
    if "copy" in kernels:
        dst = _streamed_buffer(rows, cols, device)
        runs["copy"] = (lambda: dst.copy_(w), 2 * read)
    return {name: _best_gbs(fn, moved, device, min_time_s) for name, (fn, moved) in runs.items()}


def _streamed_buffer(rows: int, cols: int, device: str) -> torch.Tensor:
    """The probe's memory: on the CPU on huge pages, like fused-decode's weight copy (a
    kernel streaming huge pages is held to a ceiling measured on them; gpteval/hugepages.py)."""
    if device.startswith("cpu"):
        return huge_page_empty((rows, cols))
    return torch.empty(rows, cols, dtype=torch.float32, device=device)


def bandwidth_probe_gbs(device: str = "cpu") -> float:
    """A quick bandwidth reading taken beside each latency round (roofline_paired_pct): the
    better of the reduction and the copy, ~0.1 s each.  GEMV is left out: it was never the
    best of the three (torch's CPU GEMV reads at about two thirds of a reduction's rate)."""
    return max(bandwidth_kernels_gbs(device, kernels=("sum", "copy"), min_time_s=0.1).values())


def memory_bandwidth_gbs(device: str = "cpu", nbytes: int | None = None) -> float:
    """The memory-bandwidth ceiling of roofline_pct: the best of `bandwidth_kernels_gbs`.
    It is still a lower bound on what the hardware can do: a variant whose kernels read
    faster than all three shows roofline_pct above 100."""
    return max(bandwidth_kernels_gbs(device, nbytes).values())


def matmul_kernels_gflops(device: str = "cpu", dtype: torch.dtype = torch.float32,
                          n: int | None = None) -> dict[str, float]:
    """Matmul throughput in GFLOP/s through each library path the engines use: an (n, n) @
    (n, n) product is 2 * n**3 floating-point operations, over the fastest of the repeats.

    torch: `torch.matmul` (MKL on x86 CPUs, cuBLAS on CUDA);
    onednn: oneDNN's inner product on a prepacked weight, the CPU path of the reference
            model's packed layout (gpteval/packed.py); float32 CPU only.  On AMD CPUs with
            AVX-512 MKL runs its AVX2 code, and this path measured 2.2x torch's (418 vs 188).
    n defaults to 1024 on the CPU and 8192 on CUDA (a 1024 matmul is too short to fill a
    large GPU)."""
    if n is None:
        n = 8192 if device.startswith("cuda") else 1024
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(n, n, generator=gen).to(device=device, dtype=dtype)
    b = torch.randn(n, n, generator=gen).to(device=device, dtype=dtype)
    out = torch.empty(n, n, device=device, dtype=dtype)

    def best(fn) -> float:
        times = repeat_timed(fn, _sync(device), _WARMUP, _MIN_COUNT, _MIN_TIME_S, _MAX_COUNT,
                             device=device)
        return 2 * n ** 3 / min(times) / 1e9

    kernels = {"torch": best(lambda: torch.matmul(a, b, out=out))}
    from ..packed import PackedLinear, packing_unavailable

    if packing_unavailable(b) is None:
        packed = PackedLinear(b)  # b as an (in, out) weight: a @ b, like torch's
        kernels["onednn"] = best(lambda: packed(a, None))
    return kernels


def matmul_gflops(device: str = "cpu", dtype: torch.dtype = torch.float32,
                  n: int | None = None) -> float:
    """The matmul ceiling of flops_pct: the best of `matmul_kernels_gflops`."""
    return max(matmul_kernels_gflops(device, dtype, n).values())


def device_ceilings(device: str) -> dict[str, float]:
    """What results.json records per device: the bandwidth ceiling and what each kernel
    reached, fp32 matmul throughput and, on CUDA, bf16 matmul throughput (the ceiling of
    half-precision variants: tensor cores run bf16/fp16 ~15x faster than fp32)."""
    kernels = bandwidth_kernels_gbs(device)
    matmuls = matmul_kernels_gflops(device)
    out = {"memory_bandwidth_gbs": max(kernels.values()),
           **{f"bandwidth_{k}_gbs": v for k, v in kernels.items()},
           "matmul_gflops": max(matmuls.values()),
           **{f"matmul_{k}_gflops": v for k, v in matmuls.items()}}
    if device.startswith("cuda"):
        out["matmul_bf16_gflops"] = matmul_gflops(device, torch.bfloat16)
    return out


def matmul_ceiling_gflops(ceilings: dict, dtype: str | None) -> float | None:
    """The matmul ceiling a variant's prefill is held to: bf16 throughput for a 16-bit
    engine where it was measured (CUDA), fp32 throughput otherwise."""
    if dtype in ("bfloat16", "float16", "bf16", "fp16") and ceilings.get("matmul_bf16_gflops"):
        return ceilings["matmul_bf16_gflops"]
    return ceilings.get("matmul_gflops")


def best_of(*measured: dict) -> dict:
    """Ceilings measured more than once in a run (at its start and its end): the best of
    each.  On a shared machine a busy neighbour can only lower a measurement of what the
    hardware can do, and a ceiling caught at a busy moment would inflate every roofline_pct."""
    keys = {k for m in measured for k, v in m.items() if isinstance(v, (int, float))}
    return {k: max(m[k] for m in measured if isinstance(m.get(k), (int, float))) for k in keys}


def rebase_percentages(metrics: dict, old: dict, new: dict, dtype: str | None) -> None:
    """Re-express a result's roofline_pct and flops_pct (at every batch size) against the
    `new` ceilings; they were computed against `old`.  The achieved rates are unchanged."""
    scale = {"roofline_pct": (old.get("memory_bandwidth_gbs"), new.get("memory_bandwidth_gbs")),
             "flops_pct": (matmul_ceiling_gflops(old, dtype), matmul_ceiling_gflops(new, dtype))}
    for name, value in list(metrics.items()):
        base = next((b for b in scale if name == b or name.startswith(b + "_b")), None)
        if base is None or not isinstance(value, (int, float)):
            continue
        before, after = scale[base]
        if before and after:
            metrics[name] = value * before / after


# ---- achieved fractions (DESIGN.md "Latency") ------------------------------------------
def decode_bandwidth_gbs(weight_bytes: int, tpot_ms: float) -> float:
    """Achieved bandwidth of decode in GB/s: bytes of weights read per decode step times
    decode steps per second, weight_bytes / (tpot_ms / 1000) / 1e9."""
    return weight_bytes / (tpot_ms / 1000.0) / 1e9


def prefill_gflops(n_params: int, batch: int, prompt_len: int, ttft_ms: float,
                   head_params: int = 0) -> float:
    """Achieved prefill throughput in GFLOP/s, counting 2 FLOPs per weight per token over
    ttft; attention scores are left out.  The lm_head (`head_params` of the n_params, V*C)
    runs on the last prompt position only, as generation computes it:
    2 * batch * ((n_params - head_params) * prompt_len + head_params)."""
    flops = 2.0 * batch * ((n_params - head_params) * prompt_len + head_params)
    return flops / (ttft_ms / 1000.0) / 1e9


def percent_of(achieved: float, ceiling: float) -> float:
    """100 * achieved / ceiling: roofline_pct (bandwidth) and flops_pct (matmul)."""
    return 100.0 * achieved / ceiling
