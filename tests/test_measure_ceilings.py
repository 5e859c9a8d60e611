"""Machine ceilings: sanity only (timings vary by machine), and the exact derived rates."""

import math
import time

import pytest

from gpteval.measure.ceilings import (
    decode_bandwidth_gbs,
    matmul_gflops,
    memory_bandwidth_gbs,
    percent_of,
    prefill_gflops,
)


def test_memory_bandwidth_is_positive_and_quick():
    start = time.perf_counter()
    gbs = memory_bandwidth_gbs("cpu", nbytes=32 * 1024 * 1024)
    assert math.isfinite(gbs) and gbs > 0
    assert time.perf_counter() - start < 10  # generous: the machine is shared


def test_matmul_throughput_is_positive():
    gflops = matmul_gflops("cpu", n=256)
    assert math.isfinite(gflops) and gflops > 0


def test_matmul_ceiling_includes_the_packed_path_the_model_runs():
    """On CPU the reference model multiplies through oneDNN-packed weights; the flops_pct
    ceiling must be measured over that path too, or its prefill would read above 100 %."""
    import torch

    from gpteval.measure.ceilings import matmul_kernels_gflops
    from gpteval.packed import packing_unavailable

    kernels = matmul_kernels_gflops("cpu", n=256)
    can_pack = packing_unavailable(torch.zeros(2, 2)) is None
    assert set(kernels) == ({"torch", "onednn"} if can_pack else {"torch"})
    assert all(math.isfinite(v) and v > 0 for v in kernels.values())


def test_derived_rates():
    # 1e9 bytes of weights read every 10 ms: 100 steps/s * 1 GB = 100 GB/s
    assert decode_bandwidth_gbs(10**9, 10.0) == 100.0
    # 2 FLOPs * 1e6 params * 4 sequences * 125 tokens = 1e9 FLOPs in 0.5 s = 2 GFLOP/s
    assert prefill_gflops(10**6, 4, 125, 500.0) == 2.0
    # an lm_head of 10**5 of those weights runs on the last of the 125 positions only
    assert prefill_gflops(10**6, 4, 125, 500.0, head_params=10**5) == pytest.approx(
        2.0 * 4 * (9 * 10**5 * 125 + 10**5) / 0.5 / 1e9)
    assert percent_of(25.0, 200.0) == 12.5


def test_bandwidth_ceiling_is_the_best_read_kernel():
    from gpteval.measure.ceilings import bandwidth_kernels_gbs

    kernels = bandwidth_kernels_gbs("cpu", nbytes=16 * 1024 * 1024)
    assert set(kernels) == {"gemv", "sum", "copy"}
    assert all(math.isfinite(v) and v > 0 for v in kernels.values())
    assert set(bandwidth_kernels_gbs("cpu", nbytes=2 ** 20, kernels=("sum",))) == {"sum"}


def test_the_probe_beside_each_round_is_a_plain_bandwidth():
    from gpteval.measure.ceilings import bandwidth_probe_gbs

    assert 0.1 < bandwidth_probe_gbs("cpu") < 10_000  # GB/s, not bytes/s or GiB/ms


def test_half_precision_prefill_is_held_to_the_bf16_matmul_ceiling():
    from gpteval.measure.ceilings import matmul_ceiling_gflops

    cuda = {"matmul_gflops": 50e3, "matmul_bf16_gflops": 750e3}
    assert matmul_ceiling_gflops(cuda, "bfloat16") == 750e3
    assert matmul_ceiling_gflops(cuda, "float16") == 750e3
    assert matmul_ceiling_gflops(cuda, "float32") == 50e3
    # the CPU records no bf16 ceiling (emulated there): fp32 is the only one
    assert matmul_ceiling_gflops({"matmul_gflops": 150.0}, "bfloat16") == 150.0


def test_ceilings_measured_twice_keep_the_best_and_percentages_follow():
    """A ceiling caught at a busy moment (start) is replaced by the better end-of-run one, and
    every result's percentages are re-expressed against it; rates stay as measured."""
    from gpteval.harness import settle_ceilings
    from gpteval.measure.ceilings import best_of

    start = {"memory_bandwidth_gbs": 20.0, "matmul_gflops": 100.0, "bandwidth_sum_gbs": 20.0}
    end = {"memory_bandwidth_gbs": 25.0, "matmul_gflops": 80.0, "bandwidth_sum_gbs": 25.0}
    assert best_of(start, end) == {"memory_bandwidth_gbs": 25.0, "matmul_gflops": 100.0,
                                   "bandwidth_sum_gbs": 25.0}
    metrics = {"bandwidth_gbs": 18.0, "roofline_pct": 90.0, "roofline_pct_b8": 50.0,
               "flops_pct": 40.0, "tpot_ms": 3.0, "roofline_pct_b4": None}
    results = {"env": {"ceilings": {"cpu": dict(start)}},
               "results": [{"device": "cpu", "engine": {"dtype": "float32"}, "metrics": metrics},
                           {"device": "cpu", "status": "skipped", "metrics": {}}]}
    settle_ceilings(results, {"cpu": end})
    assert metrics["roofline_pct"] == pytest.approx(72.0)  # 18 GB/s of 25, not of 20
    assert metrics["roofline_pct_b8"] == pytest.approx(40.0)
    assert metrics["flops_pct"] == pytest.approx(40.0)  # start's matmul ceiling was the best
    assert metrics["tpot_ms"] == 3.0 and metrics["bandwidth_gbs"] == 18.0
    assert metrics["roofline_pct_b4"] is None
    assert results["env"]["ceilings"]["cpu"]["memory_bandwidth_gbs"] == 25.0
    assert results["env"]["ceilings_measured"] == [{"cpu": start}, {"cpu": end}]


def test_a_probe_beside_a_round_that_beats_the_run_ceilings_becomes_the_ceiling():
    """Bandwidth probed beside a latency round (any batch size) is the same machine measured
    at another moment: the best of every measurement is the run's ceiling."""
    from gpteval.harness import settle_ceilings

    metrics = {"bandwidth_gbs": 30.0, "roofline_pct": 100.0, "roofline_paired_pct": 75.0}
    results = {"env": {"ceilings": {"cpu": {"memory_bandwidth_gbs": 30.0}}},
               "results": [{"device": "cpu", "metrics": metrics,
                            "samples": {"bandwidth_probe_gbs": [31.0, 40.0],
                                        "bandwidth_probe_gbs_b8": [60.0], "tpot_ms": [99.0]}},
                           {"device": "cpu", "metrics": {}, "samples": {}}]}
    settle_ceilings(results, {"cpu": {"memory_bandwidth_gbs": 28.0}})
    ceiling = results["env"]["ceilings"]["cpu"]
    assert ceiling["memory_bandwidth_gbs"] == 60.0  # not tpot's 99, not the end's 28
    assert ceiling["bandwidth_beside_rounds_gbs"] == 60.0
    assert metrics["roofline_pct"] == pytest.approx(50.0)
    assert metrics["roofline_paired_pct"] == 75.0  # its own denominators, untouched
