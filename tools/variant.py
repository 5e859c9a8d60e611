"""How the measuring tools build a variant: as `gpteval run`'s worker does, the passes of
a pipeline over a freshly loaded model, in the inference layout it measures (oneDNN
packing on the CPU), warmed up at the shape the tool will run.

Imported by the scripts beside it (run as `python tools/NAME.py`, so this directory is
on sys.path), inside their main().
"""

from __future__ import annotations

import tempfile
from pathlib import Path


def build(loaded, pipeline: str, device: str = "cpu", batch: int = 1, max_len: int = 256):
    """The engine of `pipeline` (e.g. "fused-decode:int8") over `loaded`
    (gpteval.weights.load_model's result, changed in place by the passes)."""
    from gpteval.engine import TorchEngine
    from optimizers import PassContext, parse_pipeline, run_pipeline

    ctx = PassContext(device=device, workdir=Path(tempfile.mkdtemp()), trained=loaded.trained,
                      warmup_shape=(batch, max_len))
    return run_pipeline(parse_pipeline(pipeline), TorchEngine(loaded.model, device), ctx,
                        layout=True)


def build_errors() -> tuple[type[Exception], ...]:
    """What building a variant raises for a user's error (an unknown model or pass) or a
    pass this host cannot run: a tool says it in one line and exits 2."""
    from gpteval.errors import UserError
    from optimizers import PassError
    from optimizers.base import PassSkipped

    return UserError, PassError, PassSkipped
