"""Shared by the harness and CLI tests: a tiny 'trained' checkpoint and a fast study."""

from pathlib import Path

import torch

from gpteval.model import GPT, GPTConfig
from gpteval.weights import save_checkpoint

PLUGINS = Path(__file__).resolve().parent / "plugins"
FAULTY = ("test-raise=faulty_passes:Raise,test-kill=faulty_passes:Segfault,"
          "test-hang=faulty_passes:Hang,test-nan=faulty_passes:NaNLogits,"
          "test-slow=faulty_passes:Slow,test-hang-later=faulty_passes:HangInLaterRound")


def tiny_checkpoint(directory: Path) -> Path:
    """A small byte-level GPT saved as a gpteval checkpoint marked trained, so quality
    metrics are computed (their values are those of random weights; fine for plumbing)."""
    torch.manual_seed(0)
    cfg = GPTConfig(vocab_size=256, n_positions=128, n_layer=2, n_head=2, n_embd=64, name="t")
    save_checkpoint(GPT(cfg).eval(), directory, {"trained": True})
    return directory


def study_toml(model: Path | str, variants: list[str], name: str = "t", timeout_s: float = 120,
               tasks: str = "[]", latency_extra: str = "") -> str:
    vs = ", ".join(f'"{v}"' for v in variants)
    return f'''name = "{name}"
models = ["{model}"]
variants = [{vs}]
devices = ["cpu"]
threads = 1
timeout_s = {timeout_s}

[latency]
batch = 1
prompt_len = 16
new_tokens = 8
warmup = 0
min_repeats = 2
min_time_s = 0.0
{latency_extra}
[quality]
text = "bundled:test"
context = 64
stride = 32
max_tokens = 512
tasks = {tasks}
fidelity_tokens = 128
generate_tokens = 8
'''


def plugin_env(**extra) -> dict:
    import os

    env = dict(os.environ)
    env["GPTEVAL_PASSES"] = FAULTY
    root = str(Path(__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join([str(PLUGINS), root, env.get("PYTHONPATH", "")])
    env.update(extra)
    return env
