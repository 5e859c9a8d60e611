"""Fidelity metrics on logits whose KL is worked out by hand."""

import math

import pytest
import torch

from gpteval.engine import TorchEngine
from gpteval.measure.fidelity import fidelity_metrics, first_divergence
from gpteval.measure.latency import greedy_generate

LN2, LN1 = math.log(2), 0.0


def test_identical_logits():
    logits = torch.randn(2, 5, 11, generator=torch.Generator().manual_seed(0))
    m = fidelity_metrics(logits, logits.clone())
    assert m == {"kl_mean": 0.0, "top1_agree": 1.0, "max_abs_logit_diff": 0.0}


def test_hand_computed_kl():
    # position 0: p_ref = (1/4, 1/4, 1/2), p = (1/2, 1/4, 1/4)
    #   KL = 1/4 ln(1/2) + 1/4 ln 1 + 1/2 ln 2 = ln2 / 4; argmax 2 vs 0: disagree
    # position 1: identical: KL 0, agree.  Mean KL = ln2 / 8, top1_agree = 1/2.
    ref = torch.tensor([[LN1, LN1, LN2], [0.5, -1.0, 2.0]])
    cand = torch.tensor([[LN2, LN1, LN1], [0.5, -1.0, 2.0]])
    m = fidelity_metrics(ref, cand)
    assert m["kl_mean"] == pytest.approx(LN2 / 8, rel=1e-6)
    assert m["top1_agree"] == 0.5
    assert m["max_abs_logit_diff"] == pytest.approx(LN2, rel=1e-6)


def test_kl_ignores_a_constant_shift_and_is_not_symmetric():
    ref = torch.tensor([[LN1, LN1, LN2]])
    m = fidelity_metrics(ref, ref + 3.0)  # softmax is shift invariant, logits are not
    assert m["kl_mean"] == pytest.approx(0.0, abs=1e-12)
    assert m["max_abs_logit_diff"] == pytest.approx(3.0)
    # KL(p_ref || p) != KL(p || p_ref): p_ref = (1/2, 1/2), p = (0.9, 0.1)
    p, q = torch.tensor([[0.0, 0.0]]), torch.tensor([[math.log(9.0), 0.0]])
    forward = 0.5 * math.log(0.5 / 0.9) + 0.5 * math.log(0.5 / 0.1)
    backward = 0.9 * math.log(0.9 / 0.5) + 0.1 * math.log(0.1 / 0.5)
    assert fidelity_metrics(p, q)["kl_mean"] == pytest.approx(forward, rel=1e-6)
    assert fidelity_metrics(q, p)["kl_mean"] == pytest.approx(backward, rel=1e-6)


def test_shape_mismatch():
    with pytest.raises(ValueError, match="shapes"):
        fidelity_metrics(torch.zeros(2, 3), torch.zeros(3, 2))


def test_first_divergence():
    assert first_divergence([1, 2, 3], [1, 2, 3]) is None
    assert first_divergence([1, 2, 3], [1, 5, 3]) == 1
    assert first_divergence(torch.tensor([[1, 2, 3], [4, 5, 6]]),
                            torch.tensor([[1, 2, 9], [4, 0, 6]])) == 1  # earliest over rows
    assert first_divergence([1, 2, 3], [1, 2]) == 2


def test_greedy_of_a_perturbed_model_diverges(tiny_model):
    prompt = torch.randint(0, 101, (1, 6), generator=torch.Generator().manual_seed(1))
    engine = TorchEngine(tiny_model)
    engine.reset(1, 30)
    ref = greedy_generate(engine, prompt, 20)
    engine.reset(1, 30)
    assert first_divergence(ref, greedy_generate(engine, prompt, 20)) is None
    # negating the final LayerNorm's gain (its bias is 0) negates every logit: greedy now
    # takes the argmin, so the very first token differs
    with torch.no_grad():
        tiny_model.transformer.ln_f.weight.mul_(-1.0)
    engine.reset(1, 30)
    assert first_divergence(ref, greedy_generate(engine, prompt, 20)) == 0


def test_many_positions_match_torch_kl_div():
    # more positions than one chunk; torch's kl_div(input=log p, target=log p_ref) is
    # KL(p_ref || p) per element, an independent implementation of the definition
    gen = torch.Generator().manual_seed(4)
    ref, cand = torch.randn(3, 70, 13, generator=gen), torch.randn(3, 70, 13, generator=gen)
    expected = torch.nn.functional.kl_div(cand.double().log_softmax(-1),
                                          ref.double().log_softmax(-1), log_target=True,
                                          reduction="none").sum(-1).mean().item()
    m = fidelity_metrics(ref, cand)
    assert m["kl_mean"] == pytest.approx(expected, rel=1e-12)
    assert m["top1_agree"] == (ref.argmax(-1) == cand.argmax(-1)).double().mean().item()
    assert m["max_abs_logit_diff"] == (ref.double() - cand.double()).abs().max().item()
