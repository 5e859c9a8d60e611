"""Building fused-decode's kernel: fused_decode.c and fused_prefill.c, compiled at first
use with the host's C compiler (`-O3 -march=native -fopenmp`) and cached under
~/.cache/gpteval/kernels by the hash of sources, compiler, flags and CPU.  It links the
same OpenMP runtime torch loaded (libgomp.so.1), so it shares torch's thread pool.

Two builds of the same sources: float32 weights, and int8 weights (-DGPTEVAL_W_INT8,
fused_weights.h) for `fused-decode:int8`.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
import threading
from pathlib import Path

from . import fused_prefill
from .base import PassError, PassSkipped

SOURCE = Path(__file__).with_name("fused_decode.c")
PREFILL_SOURCE = Path(__file__).with_name("fused_prefill.c")
BLOCKS_SOURCE = Path(__file__).with_name("fused_blocks.c")  # a prefill's blocks, one call
SOURCES = [SOURCE, PREFILL_SOURCE, BLOCKS_SOURCE]
MATH_HEADER = Path(__file__).with_name("fused_math.h")  # included by both sources
HEADERS = [MATH_HEADER, *(Path(__file__).with_name(f"fused_{h}.h")
                          for h in ("argmax", "attend", "gemv", "norm", "steal", "weights"))]
CFLAGS = ["-O3", "-march=native", "-fopenmp", "-shared", "-fPIC", "-std=gnu11"]
_lib_lock = threading.Lock()
_libs: dict[bool, ctypes.CDLL] = {}  # by int8


def compiler() -> str | None:
    """The C compiler the kernel is built with: $CC, else cc or gcc on PATH."""
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    return cc if cc and shutil.which(cc) else None


def cache_dir() -> Path:
    base = os.environ.get("GPTEVAL_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "gpteval")
    return Path(base) / "kernels"


def build(int8: bool = False) -> ctypes.CDLL:
    """The compiled kernel library for float32 (or int8) weights, built once per source,
    compiler, flags and CPU."""
    with _lib_lock:
        if int8 not in _libs:
            _libs[int8] = load_library(SOURCE.parent, int8)
        return _libs[int8]


def load_library(source_dir: Path, int8: bool = False) -> ctypes.CDLL:
    """The kernel library compiled from the sources in `source_dir` (this package's, or
    another revision's for an A/B: tools/kernel_ab.py), from the cache where it was built
    before, with its entry points declared."""
    flags = [*CFLAGS, "-DGPTEVAL_W_INT8"] if int8 else CFLAGS
    cc = compiler()
    if cc is None:
        raise PassError("fused-decode needs a C compiler to build its kernel; install gcc "
                        "or set CC")
    version = subprocess.run([cc, "--version"], capture_output=True, text=True,
                             check=False).stdout
    sources = [source_dir / s.name for s in SOURCES]
    headers = [source_dir / h.name for h in HEADERS]
    key = hashlib.sha256(b"".join(s.read_bytes() for s in [*sources, *headers])
                         + version.encode()
                         + " ".join(flags).encode() + _cpu_id().encode()).hexdigest()[:16]
    out = cache_dir() / f"fused_decode-{key}.so"
    if not out.exists():
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_suffix(f".{os.getpid()}.tmp")
        proc = subprocess.run([cc, *flags, f"-I{source_dir}", *map(str, sources),
                               "-o", str(tmp), "-lm"],
                              capture_output=True, text=True, check=False)
        if proc.returncode != 0:  # e.g. a compiler without OpenMP: this host cannot run it
            last = (proc.stderr.strip().splitlines() or ["no message"])[-1]
            raise PassSkipped(f"its kernel did not build with {cc} ({last[:200]})")
        os.replace(tmp, out)  # atomic: a concurrent build never loads half a file
    lib = ctypes.CDLL(str(out))
    lib.gpteval_decode_step.restype = ctypes.c_int
    lib.gpteval_decode_step.argtypes = [ctypes.c_void_p] * 5 + [ctypes.c_int]
    lib.gpteval_head.restype = ctypes.c_int
    lib.gpteval_head.argtypes = [ctypes.c_void_p] * 2 + [ctypes.c_int64, ctypes.c_void_p,
                                                         ctypes.c_int]
    lib.gpteval_scratch_floats.restype = ctypes.c_int64
    lib.gpteval_scratch_floats.argtypes = [ctypes.c_void_p]
    lib.gpteval_partials_floats.restype = ctypes.c_int64
    lib.gpteval_partials_floats.argtypes = [ctypes.c_void_p]
    lib.gpteval_head_items.restype = ctypes.c_int64
    lib.gpteval_head_items.argtypes = [ctypes.c_void_p]
    fused_prefill.declare(lib)
    return lib


def _cpu_id() -> str:
    """-march=native code runs on the CPU it was built for: the cache key names it."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("model name", "flags")):
                return line
    except OSError:
        pass
    import platform

    return platform.processor() or platform.machine()
