"""pytest-benchmark timings of the hot paths: prefill, one decode step, perplexity over a
fixed text, for `eager` and the fastest CPU passes.

Not run by the default test command (marked `benchmark`); run them with
`pytest -m benchmark tests/benchmarks --benchmark-json=bench.json`.  The model is the
bundled one when it is installed, else the `tiny` preset, so the suite always runs.
Speed targets live here and in reports, never in unit tests.
"""

import pytest
import torch

from gpteval.engine import TorchEngine
from gpteval.errors import UserError
from gpteval.measure.quality import perplexity
from gpteval.weights import load_model
from optimizers import PassContext, parse_pipeline, run_pipeline

pytestmark = pytest.mark.benchmark

VARIANTS = ["eager", "bf16", "int8-dynamic", "prune-structured:0.3", "onnx+ort-int8",
            "fused-decode"]
PROMPT = 64


def _loaded():
    try:
        return load_model("bundled")
    except UserError:
        return load_model("tiny")


@pytest.fixture(scope="module", params=VARIANTS)
def engine(request, tmp_path_factory):
    torch.manual_seed(0)
    passes = parse_pipeline(request.param)
    for p in passes:
        reason = p.available("cpu")
        if reason:
            pytest.skip(reason)
    loaded = _loaded()
    ctx = PassContext(device="cpu", workdir=tmp_path_factory.mktemp("bench"), trained=False)
    eng = run_pipeline(passes, TorchEngine(loaded.model, "cpu"), ctx, layout=True)
    eng.text_ids = torch.tensor(loaded.tokenizer.encode("The quick brown fox. " * 100))[:1024]
    return eng


def test_prefill(benchmark, engine):
    ids = engine.text_ids[:PROMPT][None]

    def run():
        engine.reset(1, PROMPT + 1)
        engine.prefill(ids)

    benchmark(run)


def test_decode_step(benchmark, engine):
    ids = engine.text_ids[:PROMPT][None]
    engine.reset(1, engine.max_positions)
    engine.prefill(ids)
    token = torch.tensor([[42]])
    state = {"pos": PROMPT}

    def step():
        if state["pos"] >= engine.max_positions - 1:  # cache full: start again
            engine.reset(1, engine.max_positions)
            engine.prefill(ids)
            state["pos"] = PROMPT
        engine.decode(token)
        state["pos"] += 1

    benchmark(step)


def test_perplexity(benchmark, engine):
    ids = engine.text_ids[:512]
    result = benchmark.pedantic(perplexity, args=(engine, ids, 128, 64), rounds=3, iterations=1)
    assert result.ppl > 1.0
