"""Loading weights and tokenizers: every way a model directory can be wrong gets one clear
UserError that names the file; round trips are lossless."""

import json

import pytest
import torch

from gpteval.errors import UserError
from gpteval.tokenizer import BPETokenizer, ByteTokenizer
from gpteval.weights import load_checkpoint, load_model, save_checkpoint

TEXT = "Grüße, 世界! naïve café — ünïcödé façade 🙂 done."


def test_byte_tokenizer_round_trip():
    tok = ByteTokenizer()
    ids = tok.encode(TEXT)
    assert max(ids) < 256 and len(ids) == len(TEXT.encode("utf-8"))
    assert tok.decode(ids) == TEXT


def test_bpe_round_trip_from_tokenizer_json(hf_dir):
    tok = BPETokenizer.from_dir(hf_dir)
    ids = tok.encode(TEXT)
    assert tok.decode(ids) == TEXT
    assert len(ids) < len(TEXT.encode("utf-8"))  # merges were applied
    # bytes of a prefix of the ids (bits per byte with max_tokens): cut after a whole word
    cut = len(tok.encode(TEXT.split(" ")[0]))
    assert tok.n_bytes(ids) == len(TEXT.encode("utf-8"))
    assert tok.n_bytes(ids[:cut]) == len(TEXT.split(" ")[0].encode("utf-8"))


def test_bpe_round_trip_from_vocab_and_merges(hf_dir):
    (hf_dir / "tokenizer.json").unlink()
    tok = BPETokenizer.from_dir(hf_dir)
    assert tok.decode(tok.encode(TEXT)) == TEXT


def test_checkpoint_round_trip(tmp_path, tiny_model):
    save_checkpoint(tiny_model, tmp_path / "ck", {"trained": True, "note": "x"})
    model, meta = load_checkpoint(tmp_path / "ck")
    assert meta["note"] == "x"
    ids = torch.randint(0, 101, (1, 10))
    with torch.no_grad():
        assert torch.equal(model(ids), tiny_model(ids))
    # the tie survives the round trip
    assert model.lm_head.weight.data_ptr() == model.transformer.wte.weight.data_ptr()


def test_random_preset_is_seeded_and_untrained():
    a = load_model("tiny", seed=3)
    b = load_model("tiny", seed=3)
    assert not a.trained and a.source == "preset"
    assert torch.equal(a.model.transformer.wte.weight, b.model.transformer.wte.weight)


def test_pytorch_model_bin_loads(hf_dir):
    transformers = pytest.importorskip("transformers")
    from safetensors.torch import load_file

    state = load_file(str(hf_dir / "model.safetensors"))
    (hf_dir / "model.safetensors").unlink()
    torch.save(state, hf_dir / "pytorch_model.bin")
    loaded = load_model(str(hf_dir))
    hf = transformers.GPT2LMHeadModel.from_pretrained(hf_dir, use_safetensors=False).eval()
    ids = torch.randint(0, 300, (1, 12))
    with torch.no_grad():
        assert (loaded.model(ids) - hf(ids).logits).abs().max() <= 1e-4


# ---- bad input: one sentence naming the file and the fix -------------------------------
def _err(spec) -> str:
    with pytest.raises(UserError) as info:
        load_model(str(spec))
    msg = str(info.value)
    assert "\n" not in msg and "Traceback" not in msg
    return msg


def test_missing_directory(tmp_path):
    msg = _err(tmp_path / "nope")
    assert "nope" in msg and "no such model directory" in msg


def test_missing_config_json(hf_dir):
    (hf_dir / "config.json").unlink()
    assert "missing config.json" in _err(hf_dir)


def test_shapes_do_not_match_config(hf_dir):
    cfg = json.loads((hf_dir / "config.json").read_text())
    cfg["n_embd"] = 64
    (hf_dir / "config.json").write_text(json.dumps(cfg))
    msg = _err(hf_dir)
    assert "model.safetensors" in msg and "shape" in msg


def test_truncated_safetensors(hf_dir):
    path = hf_dir / "model.safetensors"
    path.write_bytes(path.read_bytes()[:1000])
    msg = _err(hf_dir)
    assert "model.safetensors" in msg and "truncated or corrupt" in msg


class NotWeights:
    """A pickled object that weights_only=True must refuse to construct."""


def test_pickle_that_is_not_a_state_dict_is_refused(hf_dir):
    (hf_dir / "model.safetensors").unlink()
    torch.save({"model": NotWeights()}, hf_dir / "pytorch_model.bin")
    msg = _err(hf_dir)
    assert "pytorch_model.bin" in msg and "weights_only" in msg


def test_missing_tokenizer(hf_dir):
    for name in ("tokenizer.json", "vocab.json", "merges.txt"):
        (hf_dir / name).unlink()
    msg = _err(hf_dir)
    assert "no tokenizer found" in msg


def test_malformed_tokenizer(hf_dir):
    (hf_dir / "tokenizer.json").write_text("{not json")
    msg = _err(hf_dir)
    assert "tokenizer.json" in msg and "not a readable" in msg


def test_unknown_model_name_suggests():
    msg = _err("gpt2-smal")
    assert "Did you mean" in msg and "gpt2" in msg
