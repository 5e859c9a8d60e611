"""What an engine says it reads per decode step (the base of bandwidth_gbs/roofline_pct)."""

import pytest

from gpteval.engine import TorchEngine
from optimizers import PassContext, parse_pipeline, run_pipeline


def test_tied_model_reads_everything_but_the_position_table(tiny_model):
    e = TorchEngine(tiny_model)
    wpe = tiny_model.transformer.wpe.weight
    assert e.decode_nbytes() == e.nbytes() - wpe.numel() * 4


def test_untied_embedding_is_not_counted_as_read(tiny_model, tmp_path):
    e = run_pipeline(parse_pipeline("int8-dynamic"), TorchEngine(tiny_model),
                     PassContext(workdir=tmp_path))
    t = e.model.transformer
    gathered = (t.wte.weight.numel() + t.wpe.weight.numel()) * 4
    assert e.decode_nbytes() == e.nbytes() - gathered


def test_onnx_engine_leaves_out_gathered_tables(tiny_model, tmp_path):
    pytest.importorskip("onnxruntime")
    e = run_pipeline(parse_pipeline("onnx"), TorchEngine(tiny_model), PassContext(workdir=tmp_path))
    t = tiny_model.transformer
    gathered = (t.wte.weight.numel() + t.wpe.weight.numel()) * 4
    assert e.decode_nbytes() == e.nbytes() - gathered


def test_eager_transposed_head_is_bit_identical(tiny_model, tmp_path):
    import copy

    import torch

    ids = torch.randint(0, tiny_model.config.vocab_size, (2, 12))
    ref = TorchEngine(copy.deepcopy(tiny_model)).forward(ids)
    e = run_pipeline(parse_pipeline("eager"), TorchEngine(tiny_model), PassContext(workdir=tmp_path))
    assert torch.equal(e.forward(ids), ref)
    t = e.model.transformer
    # the head reads its own (C, V) copy; both tables are held, only the head is read
    assert e.decode_nbytes() == e.nbytes() - (t.wte.weight.numel() + t.wpe.weight.numel()) * 4


def test_hf_peer_decodes_without_deprecated_arguments(tiny_model):
    """The hf peer passes its cache under the name the installed transformers takes
    (`cache` since 5.24, where `past_key_values` warns and goes in 5.40): a prefill and
    decode steps raise no FutureWarning, and the steps match the reference model's."""
    import warnings

    import torch

    pytest.importorskip("transformers")
    from gpteval.engine import HFEngine

    hf, ref = HFEngine(tiny_model), TorchEngine(tiny_model)
    ids = torch.randint(0, tiny_model.config.vocab_size, (2, 5),
                        generator=torch.Generator().manual_seed(0))
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        for e in (hf, ref):
            e.reset(2, 8)
        got, want = hf.prefill(ids)[:, -1], ref.prefill(ids)[:, -1]
        for _ in range(2):
            token = want.argmax(-1, keepdim=True)
            got, want = hf.decode(token), ref.decode(token)
    assert torch.allclose(got, want, atol=1e-4)


def test_forward_by_decode_scores_through_the_step(tiny_model):
    """Passes that replace the decode step only (compile) set forward_by_decode: the
    teacher-forced logits are then that step's, a token at a time, on the longest cache
    seen so far (a compiled step is specialised to its cache's shape)."""
    import copy

    import torch

    ids = torch.randint(0, tiny_model.config.vocab_size, (1, 9),
                        generator=torch.Generator().manual_seed(0))
    want = TorchEngine(copy.deepcopy(tiny_model)).forward(ids)
    e = TorchEngine(tiny_model)
    e.forward_by_decode = True
    torch.testing.assert_close(e.forward(ids), want, rtol=0, atol=1e-5)
    step, shapes = e.decode_fn, []

    def marked_step(token, pos):  # a step whose logits differ from eager's by 1
        shapes.append(tuple(e.model.transformer.h[0].attn.kv_cache.k.shape))
        return step(token, pos) + 1.0

    e.decode_fn = marked_step
    e.reset(1, 16)
    torch.testing.assert_close(e.forward(ids), want + 1.0, rtol=0, atol=1e-5)
    assert len(shapes) == 9 and set(shapes) == {shapes[0]} and shapes[0][2] == 16
