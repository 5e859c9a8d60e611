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


# SIMD extensions that decide which kernels the libraries pick (oneDNN, MKL, MLAS, inductor)
ISA_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "avx512_fp16", "amx_tile")


def cpuinfo(path: Path = Path("/proc/cpuinfo")) -> dict[str, str]:
    """The first processor's fields of /proc/cpuinfo (empty where there is none)."""
    fields: dict[str, str] = {}
    try:
        for line in path.read_text().splitlines():
            if not line.strip():
                break  # end of the first processor's block
            key, _, value = line.partition(":")
            fields.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    return fields


def _cpu_model(info: dict[str, str]) -> str:
    return info.get("model name") or platform.processor() or platform.machine()


def cpu_identity(info: dict[str, str]) -> dict[str, str | None]:
    """What tells two CPUs apart where the model name does not: a VM may report just
    "AMD EPYC" for both a Zen 4 (family 25) and a Zen 5 (family 26) host, and their AVX-512
    matmul rates measured 2x apart here (207 vs 406 GFLOP/s on 2 cores).
    cpu_id: vendor, family, model, stepping; cpu_isa: the ISA_FLAGS present, and the kernel
    level torch dispatches to."""
    cpu_id = None
    if info.get("cpu family"):
        cpu_id = (f"{info.get('vendor_id', '?')} family {info['cpu family']} "
                  f"model {info.get('model', '?')} stepping {info.get('stepping', '?')}")
    flags = set(info.get("flags", "").split())
    isa = [f for f in ISA_FLAGS if f in flags]
    try:
        import torch

        isa.append(f"(torch kernels: {torch.backends.cpu.get_cpu_capability()})")
    except (ImportError, AttributeError):
        pass
    return {"cpu_id": cpu_id, "cpu_isa": " ".join(isa) or None}


def same_cpu(a: dict | None, b: dict | None) -> bool:
    """Whether two runs' env blocks name the same CPU: same model name, and the same
    family/model/stepping where both recorded it (runs from before cpu_id compare by name)."""
    a, b = a or {}, b or {}
    if a.get("cpu") != b.get("cpu"):
        return False
    return a.get("cpu_id") is None or b.get("cpu_id") is None or a["cpu_id"] == b["cpu_id"]


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
        q = subprocess.run(["nvidia-smi", ("--query-gpu=driver_version,clocks.sm,clocks.max.sm,"
                            "clocks.mem,power.limit"), "--format=csv,noheader"],
                           capture_output=True, text=True, timeout=10)
        for g, line in zip(gpus, q.stdout.strip().splitlines()):
            drv, sm, sm_max, mem, power = [x.strip() for x in line.split(",")]
            g.update(driver=drv, clock_sm=sm, clock_sm_max=sm_max, clock_mem=mem, power_limit=power)
    except (OSError, subprocess.SubprocessError, ValueError):
        pass
    return gpus


def fingerprint(threads: int = 0) -> dict:
    import torch

    info = cpuinfo()
    return {
        "cpu": _cpu_model(info),
        **cpu_identity(info),
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
