"""What the machine can do at best, measured quickly, and how close a variant comes.

Batch-1 decode reads every weight once per token, so it is bound by memory bandwidth;
prefill is a stack of matmuls, bound by arithmetic throughput (as gpt-fast reports).
The ceilings are measured, not taken from a data sheet: the best of a few repeats of a
large copy and of a square matmul, through torch, with torch's threads.

Units: GB/s and GFLOP/s are decimal (1e9).
"""

from __future__ import annotations

import torch

from .timer import repeat_timed

# a handful of repeats after one warm-up: the best of them is the ceiling
_WARMUP, _MIN_COUNT, _MIN_TIME_S, _MAX_COUNT = 1, 3, 0.3, 20


def _sync(device: str):
    if device.startswith("cuda"):
        return lambda: torch.cuda.synchronize(device)
    return lambda: None


def memory_bandwidth_gbs(device: str = "cpu", nbytes: int = 256 * 1024 * 1024) -> float:
    """Read bandwidth in GB/s as batch-1 decode sees it: a (1, k) @ (k, 4096) fp32
    matrix-vector product over a weight matrix of `nbytes` (default 256 MiB, well above
    the last-level cache) reads the matrix once; the ceiling is nbytes / the fastest
    repeat.  (A copy benchmark undercounts: on CPUs it also reads the destination, and
    decode only reads.)"""
    cols = 4096
    rows = max(nbytes // 4 // cols, 1)
    w = torch.ones(rows, cols, dtype=torch.float32, device=device)
    x = torch.ones(1, rows, dtype=torch.float32, device=device)
    times = repeat_timed(lambda: x @ w, _sync(device), _WARMUP, _MIN_COUNT,
                         _MIN_TIME_S, _MAX_COUNT, device=device)
    return rows * cols * 4 / min(times) / 1e9


def matmul_gflops(device: str = "cpu", dtype: torch.dtype = torch.float32,
                  n: int | None = None) -> float:
    """Matmul throughput in GFLOP/s: an (n, n) @ (n, n) product is 2 * n**3 floating-point
    operations; the ceiling is that over the fastest of the repeats.  n defaults to 1024
    on the CPU and 8192 on CUDA (a 1024 matmul is too short to fill a large GPU)."""
    if n is None:
        n = 8192 if device.startswith("cuda") else 1024
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(n, n, generator=gen).to(device=device, dtype=dtype)
    b = torch.randn(n, n, generator=gen).to(device=device, dtype=dtype)
    out = torch.empty(n, n, device=device, dtype=dtype)
    times = repeat_timed(lambda: torch.matmul(a, b, out=out), _sync(device), _WARMUP,
                         _MIN_COUNT, _MIN_TIME_S, _MAX_COUNT, device=device)
    return 2 * n ** 3 / min(times) / 1e9


# ---- achieved fractions (DESIGN.md "Latency") ------------------------------------------
def decode_bandwidth_gbs(weight_bytes: int, tpot_ms: float) -> float:
    """Achieved bandwidth of decode in GB/s: bytes of weights read per decode step times
    decode steps per second, weight_bytes / (tpot_ms / 1000) / 1e9."""
    return weight_bytes / (tpot_ms / 1000.0) / 1e9


def prefill_gflops(n_params: int, batch: int, prompt_len: int, ttft_ms: float) -> float:
    """Achieved prefill throughput in GFLOP/s, counting 2 FLOPs per weight per token
    (2 * n_params * batch * prompt_len; attention scores are left out) over ttft."""
    return 2.0 * n_params * batch * prompt_len / (ttft_ms / 1000.0) / 1e9


def percent_of(achieved: float, ceiling: float) -> float:
    """100 * achieved / ceiling: roofline_pct (bandwidth) and flops_pct (matmul)."""
    return 100.0 * achieved / ceiling
