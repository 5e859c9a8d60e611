"""Perplexity against transformers' own loss, and tasks on an engine with known answers."""

import math

import pytest
import torch

from gpteval.engine import Engine, TorchEngine
from gpteval.errors import UserError
from gpteval.measure.quality import (
    cloze_accuracy,
    multiple_choice,
    perplexity,
    sliding_windows,
    split_last_word,
)
from gpteval.tokenizer import ByteTokenizer


class BigramEngine(Engine):
    """Teacher-forced logits that depend only on the current byte: 10 on the byte that
    `table` says follows it, 0 elsewhere (all 0 for bytes not in the table)."""

    backend = "stub"

    def __init__(self, table: dict[str, str], vocab: int = 256):
        self.vocab_size, self.max_positions = vocab, 64
        self.table = {ord(a): ord(b) for a, b in table.items()}
        self.calls = []

    def forward(self, ids):
        self.calls.append(ids.clone())
        logits = torch.zeros(*ids.shape, self.vocab_size)
        for (b, t), tok in zip(torch.cartesian_prod(*map(torch.arange, ids.shape)), ids.view(-1)):
            if int(tok) in self.table:
                logits[b, t, self.table[int(tok)]] = 10.0
        return logits

    def reset(self, batch, max_len): ...
    def prefill(self, ids): return self.forward(ids)
    def decode(self, token): raise NotImplementedError
    def nbytes(self): return 0
    def describe(self): return {"backend": "stub"}


def test_sliding_windows_score_what_lies_past_the_overlap():
    # C=4, S=2 over 10 tokens: the first window scores 1..3, later ones what lies past
    # the previous window's end, so every token but the first is scored once
    assert sliding_windows(10, 4, 2) == [(0, 4, 1), (2, 6, 4), (4, 8, 6), (6, 10, 8)]
    # S=C: no overlap, and a window's first token has no context in it (HF's label shift)
    assert sliding_windows(10, 4, 4) == [(0, 4, 1), (4, 8, 5), (8, 10, 9)]
    assert sliding_windows(3, 8, 4) == [(0, 3, 1)]


def test_uniform_logits_give_ppl_equal_to_vocab():
    eng = BigramEngine({}, vocab=7)
    ids = torch.tensor([0, 3, 0, 0, 6, 2, 0, 1, 0, 5])
    res = perplexity(eng, ids, context=4, stride=2, n_bytes=20)
    assert res.n_scored == 9
    # log_softmax runs in float32: 1e-6 is its rounding, not slack in the definition
    assert res.ppl == pytest.approx(7.0, rel=1e-6)
    assert res.nll_sum == pytest.approx(9 * math.log(7), rel=1e-6)
    assert res.bpb == pytest.approx(9 * math.log(7) / math.log(2) / 20, rel=1e-6)
    # argmax of all-zero logits is token 0; targets 1..9 hold four zeros
    assert res.next_token_acc == pytest.approx(4 / 9)
    assert [c.shape[1] for c in eng.calls] == [4, 4, 4, 4]
    assert (res.context, res.stride) == (4, 2)


def test_perplexity_matches_transformers(hf_dir):
    transformers = pytest.importorskip("transformers")
    from gpteval.weights import load_model

    hf = transformers.GPT2LMHeadModel.from_pretrained(hf_dir).eval()
    ids = torch.randint(0, 300, (150,), generator=torch.Generator().manual_seed(5))
    context, stride = 64, 24

    # the Hugging Face perplexity guide's loop; each window's mean loss times the number of
    # labels it averaged (labels shift inside the model, so the first one never counts)
    nll_sum, n_scored, n_correct, prev_end = 0.0, 0, 0, 0
    with torch.no_grad():
        for begin in range(0, ids.numel(), stride):
            end = min(begin + context, ids.numel())
            trg_len = end - prev_end
            input_ids = ids[None, begin:end]
            labels = input_ids.clone()
            labels[:, :-trg_len] = -100
            out = hf(input_ids, labels=labels)
            n = int((labels[:, 1:] != -100).sum())
            nll_sum += out.loss.double().item() * n
            n_scored += n
            scored = labels[0, 1:] != -100
            n_correct += int((out.logits[0, :-1].argmax(-1)[scored] == labels[0, 1:][scored]).sum())
            prev_end = end
            if end == ids.numel():
                break
    expected_ppl = math.exp(nll_sum / n_scored)

    engine = TorchEngine(load_model(str(hf_dir)).model)
    res = perplexity(engine, ids, context, stride, n_bytes=150)
    assert res.n_scored == n_scored == 149
    assert res.nll_sum == pytest.approx(nll_sum, rel=1e-4)
    assert res.ppl == pytest.approx(expected_ppl, rel=1e-4)
    assert res.next_token_acc == n_correct / n_scored
    assert res.bpb == res.nll_sum / math.log(2) / 150


def test_perplexity_protocol_errors_are_user_errors():
    eng = BigramEngine({})
    with pytest.raises(UserError, match="stride"):
        perplexity(eng, torch.arange(10), context=4, stride=5)
    with pytest.raises(UserError, match="positions"):
        perplexity(eng, torch.arange(10), context=65, stride=8)


def test_split_last_word():
    assert split_last_word("the cat sat") == ("the cat", " sat")
    assert split_last_word("line one\n   word  ") == ("line one", "\n   word")
    with pytest.raises(ValueError):
        split_last_word("alone")


def test_cloze_accuracy_on_a_known_engine():
    # after 'o' comes ' ', after ' ' comes 't', after 't' comes 'o'
    eng = BigramEngine({"o": " ", " ": "t", "t": "o"})
    tok = ByteTokenizer()
    assert cloze_accuracy(eng, tok, [{"text": "go to"}]) == 1.0
    assert cloze_accuracy(eng, tok, [{"text": "go tx"}]) == 0.0  # 'x' is not the argmax
    assert cloze_accuracy(eng, tok, [{"text": "go to"}, {"text": "go tx"},
                                     {"text": "to go to"}, {"text": "gx to"}]) == 0.5


def test_long_context_keeps_its_last_tokens():
    eng = BigramEngine({"o": " ", " ": "t", "t": "o"})  # max_positions 64
    text = "x" * 100 + " go to"
    assert cloze_accuracy(eng, ByteTokenizer(), [{"text": text}]) == 1.0
    fed = eng.calls[-1][0]
    assert fed.numel() == 64 and bytes(fed.tolist()).endswith(b"xx go t")


def test_multiple_choice_acc_and_length_normalization():
    eng = BigramEngine({"o": " ", " ": "t", "t": "o"})
    tok = ByteTokenizer()
    # ln p of a byte: hi = 10 - ln(e^10 + 255) where the table predicts it, lo = -ln(e^10 + 255)
    # elsewhere.  " to" = 3 hi beats " tx" = 2 hi + lo: both metrics pick choice 0.
    easy = {"context": "go", "choices": ["to", "tx"], "label": 0}
    # " x" = hi + lo = -10.02 beats " to tox" = 6 hi + lo = -10.08 in total, but per byte
    # -10.08 / 7 > -10.02 / 2: acc picks the wrong short choice, acc_norm the right long one.
    long_right = {"context": "go", "choices": ["x", "to tox"], "label": 1}
    assert multiple_choice(eng, tok, [easy]) == {"acc": 1.0, "acc_norm": 1.0}
    assert multiple_choice(eng, tok, [long_right]) == {"acc": 0.0, "acc_norm": 1.0}
    assert multiple_choice(eng, tok, [easy, long_right]) == {"acc": 0.5, "acc_norm": 1.0}
