import os

import pytest
import torch

# deterministic and quick: a 2-core CI machine, fixed seeds everywhere
torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture
def tiny_config():
    from gpteval.model import GPTConfig

    # non-default sizes on purpose: catches code that assumes GPT-2's shapes
    return GPTConfig(vocab_size=101, n_positions=64, n_layer=2, n_head=2, n_embd=32, name="t")


@pytest.fixture
def tiny_model(tiny_config):
    from gpteval.model import GPT

    torch.manual_seed(0)
    return GPT(tiny_config).eval()


@pytest.fixture
def hf_dir(tmp_path):
    """A random Hugging Face GPT-2 checkpoint saved as safetensors, plus a BPE tokenizer."""
    transformers = pytest.importorskip("transformers")
    cfg = transformers.GPT2Config(vocab_size=300, n_positions=64, n_embd=48, n_layer=3, n_head=4)
    torch.manual_seed(1)
    model = transformers.GPT2LMHeadModel(cfg).eval()
    # give biases and LayerNorms non-trivial values so a dropped or transposed tensor shows
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias") or ".ln_" in name:
                p.add_(torch.randn_like(p) * 0.1)
    d = tmp_path / "hf-gpt2"
    model.save_pretrained(d, safe_serialization=True)
    _write_bpe(d, 300)
    return d


def _write_bpe(d, vocab_size):
    """A small byte-level BPE tokenizer trained on a fixed text, saved as tokenizer.json and
    vocab.json + merges.txt."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    text = ["The quick brown fox jumps over the lazy dog. Ünïcödé façade — naïve café."] * 50
    tok.train_from_iterator(text, trainer)
    tok.save(str(d / "tokenizer.json"))
    tok.model.save(str(d))
