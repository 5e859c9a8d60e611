"""TensorRT through Torch-TensorRT's torch.compile backend (NVIDIA GPUs only).

The decode step is compiled with `torch.compile(backend="torch_tensorrt")` (the dynamo
frontend): TensorRT builds engines for the subgraphs it supports and PyTorch runs the
rest, which here includes the in-place KV-cache writes.  Prefill stays in PyTorch at the
same precision; the teacher-forced forward (fidelity, perplexity, tasks) runs through the
compiled step a token at a time (`forward_by_decode`), so the quality columns are
TensorRT's, as compile's are inductor's.

Written against the documented API (docs.pytorch.org/TensorRT, "TensorRT Backend for
torch.compile" and CompilationSettings) and not run by gpteval's own CI, which has no
GPU and cannot install torch_tensorrt.
"""

from __future__ import annotations

import time

import torch

from gpteval.engine import Engine

from .base import Pass, PassContext, PassError, missing_package, require_torch_engine
from .compile import warm_up, warmup_shape
from .quantize import require_float_weights

PRECISIONS = {"fp16": torch.float16, "fp32": torch.float32}


class TensorRT(Pass):
    name = "tensorrt"
    summary = "Torch-TensorRT (torch.compile backend) of the decode step, fp16 or fp32 kernels"
    param = "precision: fp16 or fp32"
    default = "fp16"
    produces = "tensorrt"
    tolerance = 0.01  # not measured here: fp16 measured 3.8e-4 eager
    devices = ("cuda",)

    def parse(self, arg: str | None) -> None:
        if arg not in PRECISIONS:
            raise PassError(f"'{self.name}:{arg}': choose fp16 or fp32, e.g. '{self.name}:fp16'")
        self.precision = PRECISIONS[arg]

    def available(self, device: str) -> str | None:
        return missing_package("torch_tensorrt", "tensorrt") or super().available(device)

    def apply(self, engine: Engine, ctx: PassContext) -> Engine:
        import torch_tensorrt

        te = require_torch_engine(engine, self.name)
        require_float_weights(te, self.name)
        te.model.to(self.precision)  # TensorRT follows the graph's dtypes
        te.decode_fn = torch.compile(
            te.model.decode, backend="torch_tensorrt", dynamic=False,
            options={"enabled_precisions": {self.precision}, "min_block_size": 1})
        te.backend = "tensorrt"
        te.forward_by_decode = True
        batch, max_len = warmup_shape(ctx, te.max_positions)
        start = time.perf_counter()
        warm_up(te, batch, max_len)  # TensorRT builds its engines at the first call
        te.notes.append(f"tensorrt: torch_tensorrt {torch_tensorrt.__version__} torch.compile "
                        f"backend on decode, {self.arg} (model cast to it), engines built for "
                        f"batch {batch} x cache {max_len} in {time.perf_counter() - start:.1f} s")
        return te
