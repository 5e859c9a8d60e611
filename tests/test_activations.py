"""GPT-2's gelu in its sigmoid form against torch's tanh-approximation gelu."""

import math

import torch
from torch.nn import functional as F

from gpteval.activations import gelu_tanh


def _reference(x: torch.Tensor) -> torch.Tensor:
    """GPT-2's gelu_new written as GPT-2 writes it, in float64."""
    x = x.double()
    return 0.5 * x * (1 + torch.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3)))


def test_sigmoid_form_matches_gpt2_gelu():
    x = torch.linspace(-12, 12, 20001)
    with torch.inference_mode():
        ours = gelu_tanh(x)
    assert (ours.double() - _reference(x)).abs().max().item() < 2e-6
    # as close as torch's own float32 gelu, within a few units in the last place
    torch_gelu = F.gelu(x, approximate="tanh").double()
    assert (ours.double() - torch_gelu).abs().max().item() < 2e-6


def test_extremes_stay_finite_like_torch_gelu():
    # x³ overflows float32 beyond ~7e12: the form must still give x (or -0) there
    x = torch.tensor([-1e30, -1e4, -30.0, -0.0, 0.0, 1e-30, 30.0, 1e4, 1e30])
    with torch.inference_mode():
        ours = gelu_tanh(x)
    expected = F.gelu(x, approximate="tanh")
    assert torch.equal(ours.abs() < 1e-30, expected.abs() < 1e-30)
    big = x.abs() > 1
    assert torch.allclose(ours[big], expected[big], rtol=1e-6)
    assert torch.isnan(gelu_tanh(torch.tensor([float("nan")]))).all()


def test_input_is_left_alone_and_autograd_gets_torch_gelu():
    x = torch.randn(4, 16)
    before = x.clone()
    with torch.no_grad():
        gelu_tanh(x)
    assert torch.equal(x, before)  # in place on its own tensor only
    w = torch.randn(4, 16, requires_grad=True)
    gelu_tanh(w).sum().backward()
    expected = torch.autograd.grad(F.gelu(w, approximate="tanh").sum(), w)[0]
    assert torch.allclose(w.grad, expected)


def test_half_precision_keeps_torch_gelu():
    """bf16 through the sigmoid form would round after each of its ops; F.gelu rounds once."""
    x = torch.linspace(-6, 6, 4001).to(torch.bfloat16)
    with torch.inference_mode():
        assert torch.equal(gelu_tanh(x), F.gelu(x, approximate="tanh"))


def test_graph_capture_sees_torch_gelu(monkeypatch):
    """compile and ONNX export must find the one gelu op they fuse or map to Gelu."""
    import gpteval.activations as act

    x = torch.linspace(-6, 6, 4001)
    with torch.inference_mode():
        eager_form = gelu_tanh(x)
        monkeypatch.setattr(act, "in_graph_capture", lambda: True)
        captured = gelu_tanh(x)
    assert torch.equal(captured, F.gelu(x, approximate="tanh"))
    assert not torch.equal(eager_form, captured)  # the eager form is another computation
