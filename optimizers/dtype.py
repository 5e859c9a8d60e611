"""Half-precision passes: cast the whole model (weights, KV cache, activations) to fp16 or bf16.

Both run on CPU too: PyTorch has CPU kernels for them.  They are fast only where the CPU
has native instructions (AVX512-BF16/AMX-BF16, AVX512-FP16/AMX-FP16); elsewhere matmuls
convert per call and may be slower than fp32, which is what a benchmark should show
rather than hide.  Logits come back as fp32.
"""

from __future__ import annotations

import torch

from gpteval.engine import Engine

from .base import Pass, PassContext, require_torch_engine
from .quantize import require_float_weights


class _Cast(Pass):
    dtype: torch.dtype = torch.float32

    def apply(self, engine: Engine, ctx: PassContext) -> Engine:
        te = require_torch_engine(engine, self.name)
        require_float_weights(te, self.name)
        before = te.dtype
        te.model.to(self.dtype)  # the KV cache buffers are cast with it
        te.notes.append(f"{self.name}: weights, KV cache and activations cast "
                        f"{str(before).replace('torch.', '')} -> "
                        f"{str(self.dtype).replace('torch.', '')}")
        if te.device == "cpu":
            te.notes.append(f"{self.name} on CPU: fast only with native {self.name} "
                            "instructions (AVX512/AMX); without them matmuls convert per call")
        return te


class FP16(_Cast):
    name = "fp16"
    summary = "cast weights and activations to float16 (half the bytes of fp32)"
    dtype = torch.float16
    tolerance = 2e-3  # measured 3.8e-4 on the tiny test model


class BF16(_Cast):
    name = "bf16"
    summary = "cast weights and activations to bfloat16 (fp32's range, 8-bit mantissa)"
    dtype = torch.bfloat16
    tolerance = 0.015  # measured 3.7e-3
