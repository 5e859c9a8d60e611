"""Pruning passes do what their names say, and recovery fine-tuning keeps what they did."""

import pytest
import torch

from gpteval.engine import TorchEngine
from gpteval.model import GPT, Conv1D, GPTConfig
from optimizers import PassContext, PassError, parse_pipeline
from optimizers.prune import sparsity_of
from optimizers.quantize import block_projections

from .test_passes import CFG, PROMPT, run_sequence, tiny_gpt, train_tokens


def apply(variant: str, model: GPT | None = None, train_ids=train_tokens) -> TorchEngine:
    engine = TorchEngine(model if model is not None else tiny_gpt())
    ctx = PassContext(device="cpu", seed=0, train_ids=train_ids)
    for p in parse_pipeline(variant):
        engine = p.apply(engine, ctx)
    return engine


def weights(model: GPT) -> dict[str, torch.Tensor]:
    return {name: getattr(parent, attr).weight.detach().clone()
            for name, parent, attr in block_projections(model)}


def test_magnitude_reaches_sparsity_and_drops_the_smallest():
    dense = weights(tiny_gpt())
    engine = apply("prune-magnitude:0.4")
    pruned = weights(engine.model)
    for name, w in pruned.items():
        zero = w == 0
        assert zero.sum().item() == round(0.4 * w.numel()), name
        # every surviving weight is at least as large as every removed one
        assert dense[name][~zero].abs().min() >= dense[name][zero].abs().max(), name
        assert torch.equal(w[~zero], dense[name][~zero]), name
    assert abs(sparsity_of(engine) - 0.4) < 1e-3
    # embeddings and lm_head are not pruned
    ref = tiny_gpt()
    assert torch.equal(engine.model.transformer.wte.weight, ref.transformer.wte.weight)
    assert "dense kernels run no faster" in " ".join(engine.notes)


def test_structured_removes_neurons_physically():
    ref = tiny_gpt()
    engine = apply("prune-structured:0.25")
    hidden = 4 * CFG.n_embd
    removed = round(0.25 * hidden)
    kept = hidden - removed
    for block in engine.model.transformer.h:
        assert block.mlp.c_fc.weight.shape == (CFG.n_embd, kept)
        assert block.mlp.c_fc.bias.shape == (kept,)
        assert block.mlp.c_proj.weight.shape == (kept, CFG.n_embd)
    # each removed neuron took its c_fc column, its c_fc bias and its c_proj row
    expected = ref.num_params() - CFG.n_layer * removed * (2 * CFG.n_embd + 1)
    assert engine.model.num_params() == expected
    assert engine.nbytes() < TorchEngine(ref).nbytes()
    # the smaller model is still a consistent model: its KV cache agrees with its forward
    ids = torch.randint(0, CFG.vocab_size, (2, 20), generator=torch.Generator().manual_seed(4))
    seq = run_sequence(engine, ids)
    full = engine.forward(ids)[:, PROMPT - 1:]
    assert (seq - full).abs().max().item() <= 1e-5


def test_structured_removes_the_least_important_neurons():
    # make a quarter of each block's neurons almost silent: those must be the ones removed,
    # so the pruned model computes nearly what the dense one does
    hidden = 4 * CFG.n_embd
    quiet = torch.randperm(hidden, generator=torch.Generator().manual_seed(5))[: hidden // 4]

    def with_quiet_neurons() -> GPT:
        model = tiny_gpt()
        with torch.no_grad():
            for block in model.transformer.h:
                block.mlp.c_fc.weight[:, quiet] *= 1e-3
                block.mlp.c_fc.bias[quiet] = 0.0
                block.mlp.c_proj.weight[quiet, :] *= 1e-3
        return model

    ids = torch.randint(0, CFG.vocab_size, (1, 24), generator=torch.Generator().manual_seed(6))
    dense = TorchEngine(with_quiet_neurons()).forward(ids)
    quiet_only = apply("prune-structured:0.25", with_quiet_neurons()).forward(ids)
    # control: removing a few more than the quiet ones takes live neurons too, and shows
    more = apply("prune-structured:0.3", with_quiet_neurons()).forward(ids)
    diff_quiet = (quiet_only - dense).abs().max().item()
    diff_more = (more - dense).abs().max().item()
    assert diff_quiet < 1e-4
    assert diff_more > 20 * diff_quiet


def test_2to4_pattern_holds():
    dense = weights(tiny_gpt())
    engine = apply("prune-2to4")
    for name, w in weights(engine.model).items():
        n_in, n_out = w.shape
        groups = w.view(n_in // 4, 4, n_out)  # 4 consecutive inputs, per output
        assert ((groups == 0).sum(dim=1) >= 2).all(), name
        d = dense[name].view(n_in // 4, 4, n_out).abs()
        kept = groups != 0
        # the two kept are the two largest of their group
        assert (d.masked_fill(~kept, float("inf")).amin(dim=1)
                >= d.masked_fill(kept, -1.0).amax(dim=1)).all(), name
    assert "no speedup here" in " ".join(engine.notes)


def test_2to4_needs_input_widths_divisible_by_4():
    torch.manual_seed(0)
    odd = GPT(GPTConfig(vocab_size=50, n_positions=16, n_layer=1, n_head=1, n_embd=30))
    with pytest.raises(PassError, match="divisible by 4"):
        apply("prune-2to4", odd)


def test_wanda_follows_activations_and_beats_magnitude():
    """Wanda's premise, made strong: half of block 0's input features carry 20x larger
    activations.  Magnitude pruning ignores that; Wanda keeps the weights that read them,
    and so stays closer to the dense model on the calibration data."""
    def skewed() -> GPT:
        model = tiny_gpt()
        with torch.no_grad():
            model.transformer.h[0].ln_1.weight[: CFG.n_embd // 2] *= 20.0
        return model

    ids = train_tokens()[: 4 * CFG.n_positions].view(4, CFG.n_positions)
    dense = TorchEngine(skewed()).forward(ids)
    wanda = apply("prune-wanda:0.5", skewed())
    magnitude = apply("prune-magnitude:0.5", skewed())

    w = wanda.model.transformer.h[0].attn.c_attn.weight  # (in, out)
    loud, soft = w[: CFG.n_embd // 2], w[CFG.n_embd // 2:]
    assert (loud == 0).float().mean() < 0.1 < 0.9 < (soft == 0).float().mean()
    # per output: exactly half of each column's inputs removed
    assert ((w == 0).sum(dim=0) == CFG.n_embd // 2).all()

    err_wanda = (wanda.forward(ids) - dense).pow(2).mean().item()
    err_magnitude = (magnitude.forward(ids) - dense).pow(2).mean().item()
    assert err_wanda < 0.5 * err_magnitude


def test_wanda_without_training_data_calibrates_on_random_ids():
    engine = apply("prune-wanda", train_ids=None)
    assert abs(sparsity_of(engine) - 0.5) < 1e-3
    assert "random token ids" in " ".join(engine.notes)


def test_finetune_keeps_zeros_and_lowers_loss():
    engine = apply("prune-magnitude:0.5")
    before = weights(engine.model)
    ids = train_tokens()
    x, y = ids[:-1][: 4 * 63].view(4, 63), ids[1:][: 4 * 63].view(4, 63)
    with torch.no_grad():
        loss_before = engine.model(x, y)[1].item()
    engine = parse_pipeline("finetune:8")[0].apply(
        engine, PassContext(seed=0, train_ids=train_tokens))
    after = weights(engine.model)
    changed = 0
    for name, w in after.items():
        assert torch.equal(w[before[name] == 0], torch.zeros_like(w[before[name] == 0])), name
        changed += int((w != before[name]).sum())
    assert changed > 0
    assert not engine.model.training
    with torch.no_grad():
        loss_after = engine.model(x, y)[1].item()
    assert loss_after < loss_before - 0.05
    assert "kept at zero" in engine.notes[-1]


def test_finetune_keeps_the_2to4_pattern():
    engine = apply("prune-2to4+finetune:3")
    for name, w in weights(engine.model).items():
        groups = w.view(w.shape[0] // 4, 4, w.shape[1])
        assert ((groups == 0).sum(dim=1) >= 2).all(), name


def test_finetune_without_training_data_is_skipped_with_why():
    from optimizers.base import PassSkipped

    with pytest.raises(PassSkipped, match="needs training data"):
        apply("finetune:3", train_ids=None)


def test_pruning_after_quantization_is_rejected():
    engine = apply("int8-dynamic")
    with pytest.raises(PassError, match="before quantization"):
        parse_pipeline("prune-wanda")[0].apply(engine, PassContext())


def test_projections_stay_conv1d_after_pruning():
    engine = apply("prune-structured+prune-magnitude")
    assert all(isinstance(getattr(parent, attr), Conv1D)
               for _, parent, attr in block_projections(engine.model))
