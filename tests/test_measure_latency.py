"""Latency: what one repeat is, how TPOT follows from the steps, and the derived rates."""

import time

import pytest
import torch

from gpteval.engine import Engine, TorchEngine
from gpteval.errors import UserError
from gpteval.measure.latency import LatencyResult, greedy_generate, measure_latency
from gpteval.measure.stats import Stats


class SuccessorEngine(Engine):
    """Next token is always the current one + 1 (mod V); prefill and decode sleep a fixed
    time and every call is logged, so timing and control flow can be checked."""

    backend = "stub"

    def __init__(self, vocab=50, prefill_s=0.0, decode_s=0.0):
        self.vocab_size, self.max_positions = vocab, 64
        self.prefill_s, self.decode_s = prefill_s, decode_s
        self.log = []

    def _logits(self, tokens):  # tokens (B, T) -> (B, T, V)
        return torch.nn.functional.one_hot((tokens + 1) % self.vocab_size,
                                           self.vocab_size).float()

    def reset(self, batch, max_len):
        self.log.append(("reset", batch, max_len))

    def prefill(self, ids):
        self.log.append(("prefill", tuple(ids.shape)))
        time.sleep(self.prefill_s)
        return self._logits(ids)[:, -1:]  # the next token's logits, as every engine returns

    def decode(self, token):
        self.log.append(("decode", tuple(token.shape)))
        time.sleep(self.decode_s)
        return self._logits(token)[:, -1]

    def forward(self, ids):
        return self._logits(ids)

    def synchronize(self):
        self.log.append(("sync",))

    def nbytes(self):
        return 0

    def describe(self):
        return {"backend": "stub", "device": "cpu", "dtype": "float32", "notes": []}


def test_greedy_generate_takes_the_argmax():
    ids = torch.tensor([[3, 7], [10, 48]])
    out = greedy_generate(SuccessorEngine(), ids, 4)
    assert out.tolist() == [[8, 9, 10, 11], [49, 0, 1, 2]]


def test_one_repeat_is_reset_prefill_and_n_minus_1_decodes():
    eng = SuccessorEngine()
    res = measure_latency(eng, batch=2, prompt_len=5, new_tokens=4, warmup=1, min_repeats=3,
                          min_time_s=0.0)
    calls = [c[0] for c in eng.log if c[0] != "sync"]
    assert calls == ["reset", "prefill", "decode", "decode", "decode"] * 4  # 1 warm-up + 3
    assert ("reset", 2, 9) in eng.log and ("prefill", (2, 5)) in eng.log
    assert ("decode", (2, 1)) in eng.log
    assert (res.ttft_ms.n, res.tpot_ms.n, res.decode_step_ms.n) == (3, 3, 9)
    # every clock read on the CPU comes right after a synchronize
    assert eng.log.count(("sync",)) >= 4 * 5


def test_timings_cover_the_right_work():
    # sleeps are lower bounds: prefill >= 30 ms, each decode step >= 8 ms
    eng = SuccessorEngine(prefill_s=0.03, decode_s=0.008)
    res = measure_latency(eng, batch=1, prompt_len=4, new_tokens=3, warmup=0, min_repeats=2,
                          min_time_s=0.0)
    assert res.ttft_ms.min >= 30.0
    assert res.decode_step_ms.min >= 8.0
    assert res.tpot_ms.min >= 8.0
    assert res.ttft_ms.median > res.decode_step_ms.median


def test_tpot_is_total_minus_ttft_over_n_minus_1(tiny_model):
    res = measure_latency(TorchEngine(tiny_model), batch=2, prompt_len=8, new_tokens=5,
                          warmup=1, min_repeats=3, min_time_s=0.0)
    steps = res.decode_step_ms.samples
    assert len(steps) == 3 * 4
    for i, tpot in enumerate(res.tpot_ms.samples):
        assert tpot == pytest.approx(sum(steps[4 * i:4 * i + 4]) / 4, rel=1e-12)
    assert res.decode_tok_s == 2 * 1000.0 / res.tpot_ms.median
    assert res.prefill_tok_s == 2 * 8 * 1000.0 / res.ttft_ms.median


def test_rates_and_as_dict_from_fixed_stats():
    res = LatencyResult(Stats([10.0, 20.0, 30.0]), Stats([4.0, 5.0, 6.0]), Stats([5.0] * 6),
                        batch=4, prompt_len=16, new_tokens=3, warmup=1, min_repeats=3,
                        min_time_s=0.5)
    assert res.decode_tok_s == 800.0  # 4 * 1000 / 5
    assert res.prefill_tok_s == 3200.0  # 4 * 16 * 1000 / 20
    d = res.as_dict()
    assert (d["ttft_ms"], d["tpot_ms"]) == (20.0, 5.0)
    assert d["latency_protocol"] == {"batch": 4, "prompt_len": 16, "new_tokens": 3,
                                     "warmup": 1, "min_repeats": 3, "min_time_s": 0.5}
    assert d["samples"]["tpot_ms"] == [4.0, 5.0, 6.0]
    assert d["stats"]["decode_step_ms"]["p99"] == 5.0
    assert "samples" not in res.as_dict(include_samples=False)


@pytest.mark.parametrize("prompt_len,new_tokens", [(60, 10), (8, 1)])
def test_impossible_protocols_are_user_errors(prompt_len, new_tokens):
    with pytest.raises(UserError, match="new_tokens"):
        measure_latency(SuccessorEngine(), 1, prompt_len, new_tokens, min_time_s=0.0)
