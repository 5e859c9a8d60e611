"""CUDA checks, marked `gpu`: they run where torch sees a GPU and are skipped elsewhere
with that reason.  On CPU-only machines the CUDA code paths are covered only by the
device-guard tests at the bottom."""

import pytest
import torch

from gpteval.engine import TorchEngine
from gpteval.model import GPT, GPTConfig

NO_CUDA = "needs CUDA: torch sees no GPU on this machine"
gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason=NO_CUDA)


def _model():
    torch.manual_seed(0)
    return GPT(GPTConfig(vocab_size=256, n_positions=128, n_layer=2, n_head=2, n_embd=64)).eval()


@pytest.mark.gpu
@gpu
def test_timer_synchronizes_device_work():
    """A clock read right after queuing a long kernel must include the kernel's time."""
    from gpteval.measure.timer import repeat_timed

    a = torch.randn(4096, 4096, device="cuda")

    def work():
        for _ in range(20):
            a @ a

    times = repeat_timed(work, torch.cuda.synchronize, warmup=1, min_count=3, min_time_s=0.0,
                         device="cuda")
    # 20 matmuls of 4096³ are > 2.7 TFLOP: no GPU does that in under 1 ms
    assert min(times) > 1e-3


@pytest.mark.gpu
@gpu
def test_cuda_engine_matches_cpu_logits():
    model = _model()
    ids = torch.randint(0, 256, (2, 24))
    cpu = TorchEngine(model, "cpu").forward(ids)
    cuda = TorchEngine(_model(), "cuda").forward(ids).cpu()
    assert (cpu - cuda).abs().max() < 1e-3


@pytest.mark.gpu
@gpu
def test_peak_device_memory_is_reported():
    from gpteval.measure.memory import peak_device_mb, reset_peak_device

    reset_peak_device("cuda")
    x = torch.empty(64 * 2**20, dtype=torch.uint8, device="cuda")
    peak = peak_device_mb("cuda")
    del x
    assert peak["allocated"] >= 64 and peak["reserved"] >= peak["allocated"]


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("variant", ["fp16", "bf16", "int8-weight-only", "prune-2to4"])
def test_cuda_passes_run_or_skip_with_reason(variant, tmp_path):
    from optimizers import PassContext, parse_pipeline, run_pipeline

    passes = parse_pipeline(variant)
    reasons = [p.available("cuda") for p in passes]
    if any(reasons):
        pytest.skip(next(r for r in reasons if r))
    engine = run_pipeline(passes, TorchEngine(_model(), "cuda"),
                          PassContext(device="cuda", workdir=tmp_path))
    ids = torch.randint(0, 256, (1, 16), device="cuda")
    assert torch.isfinite(engine.forward(ids)).all()


@pytest.mark.gpu
@gpu
def test_decode_step_never_waits_for_the_device():
    """A host-device sync inside decode would put the host's launch time into every
    measured step; CUDA's sync debug mode turns any such sync into an error."""
    engine = TorchEngine(_model(), "cuda")
    engine.reset(2, 32)
    token = engine.prefill(torch.randint(0, 256, (2, 8))).argmax(-1)[:, -1:]
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(3):
            token = engine.decode(token).argmax(dim=-1, keepdim=True)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    # and the device-side position advanced with the steps: same tokens as the full forward
    engine.reset(1, 32)
    ids = torch.randint(0, 256, (1, 8))
    step = engine.prefill(ids)[:, -1]
    nxt = step.argmax(-1, keepdim=True)
    step2 = engine.decode(nxt)
    full = engine.forward(torch.cat([ids, nxt.cpu()], dim=1))[:, -1]
    assert (step2 - full).abs().max() < 1e-3


@pytest.mark.gpu
@gpu
def test_cuda_ceilings_include_bf16_matmul():
    from gpteval.measure.ceilings import device_ceilings

    c = device_ceilings("cuda")
    # tensor cores: bf16 beats fp32 even where the process allows TF32 for fp32 matmuls
    # (measured on an H200: 794 TFLOP/s bf16, 52 fp32 without TF32; a 2x margin failed
    # under pytest, where an imported library had switched TF32 on)
    assert c["matmul_bf16_gflops"] > c["matmul_gflops"]
    assert c["memory_bandwidth_gbs"] == max(c[f"bandwidth_{k}_gbs"] for k in ("gemv", "sum", "copy"))


# ---- device guards that run everywhere --------------------------------------------------
def test_cuda_only_passes_give_a_reason_without_cuda():
    if torch.cuda.is_available():
        pytest.skip("a GPU is present: the no-CUDA reasons cannot be checked")
    from optimizers import pass_class

    for name in ("fp8", "tensorrt"):
        reason = pass_class(name)().available("cpu") or pass_class(name)().available("cuda")
        assert reason, name
    assert "CUDA" in pass_class("fp16")().available("cuda")
