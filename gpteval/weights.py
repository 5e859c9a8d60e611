"""Where weights come from: a local Hugging Face GPT-2 directory, gpteval's own checkpoint,
a preset with random weights, or the bundled model.  Nothing is ever fetched from a
network; a model path is only read.

`load_model(spec)` is the one entry point; it returns a `LoadedModel` that says whether
the weights were trained (quality metrics mean something) or random (they do not).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import torch

from .errors import UserError, did_you_mean, first_line
from .model import GPT, PRESETS, GPTConfig, preset_config
from .tokenizer import BPETokenizer, ByteTokenizer

CHECKPOINT_CONFIG = "gpteval_config.json"
CHECKPOINT_WEIGHTS = "model.safetensors"
BUNDLED = "bundled"


@dataclass
class LoadedModel:
    model: GPT
    tokenizer: object  # ByteTokenizer | BPETokenizer
    source: str  # 'bundled', 'preset', 'hf', 'checkpoint'
    spec: str  # what the user asked for
    trained: bool  # False: random weights, quality metrics are not meaningful
    meta: dict = field(default_factory=dict)

    def describe(self) -> dict:
        cfg = self.model.config
        return {
            "spec": self.spec, "source": self.source, "trained": self.trained,
            "config": cfg.to_dict(), "params": self.model.num_params(),
            "tokenizer": self.tokenizer.describe(), **self.meta,
        }


# ---- random presets ----------------------------------------------------------------------
def random_model(preset: str, seed: int = 0) -> GPT:
    """A preset with seeded random weights: valid for speed and memory only."""
    torch.manual_seed(seed)
    return GPT(preset_config(preset)).eval()


# ---- gpteval checkpoints -------------------------------------------------------------------
def save_checkpoint(model: GPT, directory: str | Path, meta: dict | None = None) -> Path:
    """Write `gpteval_config.json` + `model.safetensors` (lm_head stays tied: not stored)."""
    from safetensors.torch import save_file

    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()
             if k != "lm_head.weight"}
    save_file(state, str(d / CHECKPOINT_WEIGHTS), metadata={"format": "gpteval"})
    payload = {"config": model.config.to_dict(), "meta": meta or {}}
    (d / CHECKPOINT_CONFIG).write_text(json.dumps(payload, indent=2) + "\n")
    return d


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except Exception as e:
        raise UserError(f"{path}: not a readable safetensors file ({first_line(e)}); the file is "
                        "truncated or corrupt, copy it again from its source") from None


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"{path}: not valid JSON ({first_line(e)}); fix or replace the file") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a JSON object; fix or replace the file")
    return data


def _load_state(model: GPT, state: dict[str, torch.Tensor], where: Path) -> GPT:
    """Copy a state dict into the model key by key, naming the first mismatch."""
    own = model.state_dict()
    expected = {k for k in own if k != "lm_head.weight"}
    missing = sorted(expected - set(state))
    if missing:
        raise UserError(f"{where}: weights lack {missing[0]} (and {len(missing) - 1} more); "
                        "the weights do not belong to this config")
    for k in expected:
        if tuple(state[k].shape) != tuple(own[k].shape):
            raise UserError(f"{where}: {k} has shape {tuple(state[k].shape)} but the config "
                            f"needs {tuple(own[k].shape)}; use the config.json that came "
                            "with these weights")
    with torch.no_grad():
        for k in expected:
            own[k].copy_(state[k].to(own[k].dtype))
    return model.eval()


def load_checkpoint(directory: str | Path) -> tuple[GPT, dict]:
    d = Path(directory)
    payload = _read_json(d / CHECKPOINT_CONFIG)
    try:
        config = GPTConfig.from_dict(payload["config"])
    except (KeyError, TypeError, ValueError) as e:
        raise UserError(f"{d / CHECKPOINT_CONFIG}: bad config ({first_line(e)})") from None
    wpath = d / CHECKPOINT_WEIGHTS
    if not wpath.is_file():
        raise UserError(f"{d}: missing {CHECKPOINT_WEIGHTS}; the checkpoint is incomplete")
    model = GPT(config)
    return _load_state(model, _read_safetensors(wpath), wpath), payload.get("meta", {})


# ---- Hugging Face GPT-2 directories ----------------------------------------------------
_HF_PREFIXES = ("transformer.", "")


def hf_config(data: dict, where: Path) -> GPTConfig:
    if data.get("model_type", "gpt2") != "gpt2":
        raise UserError(f"{where}: model_type is {data.get('model_type')!r}; gpteval loads "
                        "GPT-2 checkpoints (model_type 'gpt2') only")
    try:
        return GPTConfig(
            vocab_size=int(data.get("vocab_size", 50257)),
            n_positions=int(data.get("n_positions", data.get("n_ctx", 1024))),
            n_layer=int(data["n_layer"]), n_head=int(data["n_head"]), n_embd=int(data["n_embd"]),
            layer_norm_eps=float(data.get("layer_norm_epsilon", 1e-5)),
            name=str(data.get("_name_or_path") or where.parent.name),
        )
    except (KeyError, TypeError, ValueError) as e:
        raise UserError(f"{where}: not a GPT-2 config ({first_line(e)}); it needs n_layer, "
                        "n_head and n_embd") from None


def hf_state_to_gpteval(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Map HF GPT-2 names onto gpteval's.  Conv1D weights are already (in, out), the layout
    gpteval stores, so no transpose is needed; attention bias buffers are dropped."""
    out = {}
    for k, v in state.items():
        if k.endswith((".attn.bias", ".attn.masked_bias")) or k == "lm_head.weight":
            continue
        key = k if k.startswith("transformer.") else "transformer." + k
        out[key] = v
    return out


def load_hf_dir(directory: str | Path) -> tuple[GPT, BPETokenizer]:
    d = Path(directory)
    if not d.is_dir():
        raise UserError(f"{d}: no such model directory; pass an existing Hugging Face GPT-2 "
                        "directory, a gpteval checkpoint, 'bundled' or a preset name")
    cfg_path = d / "config.json"
    if not cfg_path.is_file():
        raise UserError(f"{d}: missing config.json; a Hugging Face model directory needs "
                        "config.json beside its weights")
    config = hf_config(_read_json(cfg_path), cfg_path)
    st, binf = d / "model.safetensors", d / "pytorch_model.bin"
    if st.is_file():
        state, wpath = _read_safetensors(st), st
    elif binf.is_file():
        state, wpath = _read_torch_bin(binf), binf
    else:
        raise UserError(f"{d}: no weights found; expected model.safetensors or pytorch_model.bin")
    model = _load_state(GPT(config), hf_state_to_gpteval(state), wpath)
    return model, BPETokenizer.from_dir(d)


def _read_torch_bin(path: Path) -> dict[str, torch.Tensor]:
    try:
        # weights_only=True: a pickle that holds anything but tensors is refused
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:
        raise UserError(f"{path}: refused or unreadable ({first_line(e)}); gpteval loads only plain "
                        "state dicts (weights_only=True); convert it to model.safetensors") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UserError(f"{path}: not a plain state dict of tensors; convert it to "
                        "model.safetensors")
    return state


# ---- the one entry point -------------------------------------------------------------------
def bundled_dir() -> Path:
    return Path(str(resources.files("gpteval.data").joinpath("bundled")))


def load_model(spec: str = BUNDLED, seed: int = 0) -> LoadedModel:
    """'bundled', a preset name, a Hugging Face GPT-2 directory or a gpteval checkpoint."""
    if spec == BUNDLED:
        d = bundled_dir()
        if not (d / CHECKPOINT_WEIGHTS).is_file():
            raise UserError("the bundled model is missing from this installation; reinstall "
                            "gpteval or run `gpteval train` to make it")
        model, meta = load_checkpoint(d)
        return LoadedModel(model, ByteTokenizer(), "bundled", spec, True, meta)
    if spec in PRESETS:
        tok = ByteTokenizer() if PRESETS[spec].get("vocab_size") == 256 else None
        model = random_model(spec, seed)
        if tok is None:
            tok = _VocabOnlyTokenizer(model.config.vocab_size)
        return LoadedModel(model, tok, "preset", spec, False, {"seed": seed})
    path = Path(spec).expanduser()
    if (path / CHECKPOINT_CONFIG).is_file():
        model, meta = load_checkpoint(path)
        tok = ByteTokenizer() if model.config.vocab_size == 256 else BPETokenizer.from_dir(path)
        return LoadedModel(model, tok, "checkpoint", spec, bool(meta.get("trained", True)), meta)
    if path.exists() or "/" in spec or spec.startswith("."):
        model, tok = load_hf_dir(path)
        return LoadedModel(model, tok, "hf", spec, True, {})
    raise UserError(f"unknown model {spec!r}; use 'bundled', a preset "
                    f"({', '.join(PRESETS)}), or a path to a model directory."
                    + did_you_mean(spec, [BUNDLED, *PRESETS]))


class _VocabOnlyTokenizer:
    """For random presets with GPT-2's vocabulary: text is never decoded meaningfully, so
    prompts are drawn as byte values (valid ids in any vocabulary ≥ 256)."""

    name = "bytes-in-gpt2-vocab"

    def __init__(self, vocab_size: int) -> None:
        self.vocab_size = vocab_size

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids) -> str:
        return bytes(int(i) % 256 for i in ids).decode("utf-8", errors="replace")

    def describe(self) -> dict:
        return {"kind": self.name, "vocab_size": self.vocab_size}

