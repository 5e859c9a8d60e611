"""The environment fingerprint recorded with every run: what machine and software made
these numbers.  Reading the machine is cheap; ceilings are measured by the harness."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path

PACKAGES = ("gpteval", "torch", "numpy", "onnx", "onnxruntime", "onnxruntime-gpu", "onnxscript",
            "torchao", "torch-tensorrt", "transformers", "tokenizers", "safetensors")


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _ram_gb() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 1024 / 1024, 1)
    except OSError:
        pass
    return None


def _versions() -> dict[str, str | None]:
    out = {}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def git_commit() -> str | None:
    """The commit of the gpteval source in use, when it runs from a git checkout."""
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True,
                             text=True, timeout=5)
        if out.returncode != 0:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=here, capture_output=True, text=True, timeout=5).stdout.strip()
        return out.stdout.strip() + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


def gpu_info() -> list[dict] | None:
    import torch

    if not torch.cuda.is_available():
        return None
    gpus = []
    for i in range(torch.cuda.device_count()):
        p = torch.cuda.get_device_properties(i)
        gpus.append({"name": p.name, "memory_gb": round(p.total_memory / 1e9, 1),
                     "capability": f"{p.major}.{p.minor}", "sms": p.multi_processor_count})
    try:
        q = subprocess.run(["nvidia-smi", "--query-gpu=driver_version,clocks.sm,clocks.max.sm,"
                            "clocks.mem,power.limit", "--format=csv,noheader"],
                           capture_output=True, text=True, timeout=10)
        for g, line in zip(gpus, q.stdout.strip().splitlines()):
            drv, sm, sm_max, mem, power = [x.strip() for x in line.split(",")]
            g.update(driver=drv, clock_sm=sm, clock_sm_max=sm_max, clock_mem=mem, power_limit=power)
    except (OSError, subprocess.SubprocessError, ValueError):
        pass
    return gpus


def fingerprint(threads: int = 0) -> dict:
    import torch

    return {
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "threads": threads or torch.get_num_threads(),
        "ram_gb": _ram_gb(),
        "os": platform.platform(),
        "python": sys.version.split()[0],
        "packages": _versions(),
        "git_commit": git_commit(),
        "cuda": torch.version.cuda if torch.cuda.is_available() else None,
        "gpu": gpu_info(),
    }
