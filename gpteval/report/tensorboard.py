"""Optional TensorBoard export: every numeric metric as a scalar, decode-step samples as histograms.

Tags are "<metric>/<model>/<device>/<variant>" so TensorBoard's tag filter can show one metric
across variants.  Runs have no steps: every scalar is written at global_step 0.
"""

from __future__ import annotations

from pathlib import Path

from gpteval.errors import UserError
from gpteval.report import results as R


def require_tensorboard():
    """torch's SummaryWriter, or the one-line error naming the package to install."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise UserError("TensorBoard export needs the tensorboard package; install it with "
                        "`pip install tensorboard` or leave out --tensorboard") from None
    return SummaryWriter


def write_tensorboard(results: dict, log_dir) -> Path:
    """Write the ok results of `results` as TensorBoard events under log_dir; returns log_dir."""
    SummaryWriter = require_tensorboard()
    import numpy as np

    log_dir = Path(log_dir)
    writer = SummaryWriter(log_dir=str(log_dir))
    try:
        for entry in results["results"]:
            if entry["status"] != "ok":
                continue
            where = f"{entry['model']}/{entry['device']}/{entry['variant']}"
            for name in R.metric_names([entry]):
                value = R.metric(entry, name)
                if value is not None:
                    writer.add_scalar(f"{name}/{where}", value, global_step=0)
            steps = R.samples(entry, "decode_step_ms")
            if steps:
                writer.add_histogram(f"decode_step_ms/{where}", np.asarray(steps), global_step=0)
        name = (results.get("run") or {}).get("name") or "gpteval"
        writer.add_text("run", f"gpteval run `{name}`: {len(results['results'])} results", global_step=0)
    finally:
        writer.close()
    return log_dir
