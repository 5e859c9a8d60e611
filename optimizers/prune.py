"""Pruning passes: set weights of the transformer blocks to zero, or remove them.

Only the block projections are pruned (attention c_attn/c_proj, MLP c_fc/c_proj), never
the embeddings, LayerNorms or lm_head, as in the Wanda and SparseGPT papers.  Weights are
Conv1D-style (in, out): entry [i, j] connects input feature i to output j.

- `prune-magnitude:S`: the fraction S of smallest |w| of each matrix set to zero.
- `prune-wanda:S`: the same per output, scored by |w| x ||input activation||_2 (Wanda,
  Sun et al. 2023), calibrated block by block on training tokens.
- `prune-structured:S`: removes the fraction S of each block's MLP neurons outright; the
  model gets smaller and faster on any hardware.
- `prune-2to4`: 2 of every 4 consecutive inputs zero (NVIDIA's semi-structured sparsity);
  stored compressed on CUDA, a masked dense model elsewhere.

Unstructured zeros make no dense kernel faster; those passes say so in the notes, and
their value shows in the quality columns (and after a sparse-aware runtime).
"""

from __future__ import annotations

import torch
from torch import nn

from gpteval.engine import Engine, TorchEngine
from gpteval.model import GPT, Conv1D

from .base import Pass, PassContext, PassError, parse_fraction, require_torch_engine
from .quantize import block_projections, linearize


def projections(te: TorchEngine, pass_name: str) -> list[tuple[str, Conv1D]]:
    """The block projections as Conv1D modules; a converted model means a wrong order."""
    out = []
    for name, parent, attr in block_projections(te.model):
        module = getattr(parent, attr)
        if not isinstance(module, Conv1D) or type(module.weight) is not nn.Parameter:
            raise PassError(f"pass '{pass_name}' works on floating-point Conv1D weights, but "
                            f"{name} was already converted (quantized or sparse); put "
                            f"'{pass_name}' before quantization and 2:4 passes")
        out.append((name, module))
    return out


def sparsity_of(te: TorchEngine) -> float:
    """Fraction of zero entries over all block projection weights."""
    zeros = total = 0
    for _, parent, attr in block_projections(te.model):
        w = getattr(parent, attr).weight
        zeros += int((w == 0).sum())
        total += w.numel()
    return zeros / total


def zero_smallest(w: torch.Tensor, score: torch.Tensor, fraction: float, dim: int | None) -> None:
    """Zero, in place, the `fraction` of entries of w with the lowest score: over the whole
    matrix (dim None) or within each slice along `dim`.  Exact counts, ties broken by index."""
    if dim is None:
        k = round(fraction * w.numel())
        idx = torch.topk(score.flatten(), k, largest=False).indices
        w.view(-1)[idx] = 0
    else:
        k = round(fraction * w.shape[dim])
        idx = torch.topk(score, k, dim=dim, largest=False).indices
        w.scatter_(dim, idx, 0.0)


class _Unstructured(Pass):
    param = "sparsity: fraction of each weight matrix set to zero, between 0 and 1"
    default = "0.5"
    tolerance = None

    def parse(self, arg: str | None) -> None:
        self.sparsity = parse_fraction(self.name, arg)


DENSE_NOTE = ("zeros are stored densely: dense kernels run no faster and weights take the "
              "same bytes")


class PruneMagnitude(_Unstructured):
    name = "prune-magnitude"
    summary = "unstructured: zero the smallest-|w| fraction of each block weight matrix"

    @torch.no_grad()
    def apply(self, engine: Engine, ctx: PassContext) -> Engine:
        te = require_torch_engine(engine, self.name)
        layers = projections(te, self.name)
        for _, m in layers:
            zero_smallest(m.weight, m.weight.abs(), self.sparsity, dim=None)
        te.notes.append(f"prune-magnitude: {self.sparsity:.0%} of each of {len(layers)} block "
                        f"weight matrices zeroed by |w| (overall {sparsity_of(te):.1%}); "
                        f"{DENSE_NOTE}")
        return te


CALIBRATION_WINDOWS = 16
CALIBRATION_LEN = 128


def calibration_batch(model: GPT, ctx: PassContext, windows: int = CALIBRATION_WINDOWS,
                      length: int = CALIBRATION_LEN) -> tuple[torch.Tensor, str]:
    """(windows, length) token ids from the training split, or random ids where the model has
    none; the second value says which, for the notes."""
    length = min(length, model.config.n_positions)
    gen = torch.Generator().manual_seed(ctx.seed)
    ids = ctx.train_ids() if ctx.train_ids is not None else None
    if ids is None or ids.numel() <= length:
        batch = torch.randint(0, model.config.vocab_size, (windows, length), generator=gen)
        return batch, "random token ids (no training data for this model)"
    starts = torch.randint(0, ids.numel() - length, (windows,), generator=gen)
    batch = torch.stack([ids[s:s + length] for s in starts.tolist()])
    return batch.long(), f"{windows} windows x {length} training tokens"


class PruneWanda(_Unstructured):
    name = "prune-wanda"
    summary = "unstructured: zero the lowest |w| x ||x||_2 fraction per output (Wanda), calibrated"

    @torch.no_grad()
    def apply(self, engine: Engine, ctx: PassContext) -> Engine:
        te = require_torch_engine(engine, self.name)
        model = te.model
        projections(te, self.name)  # order check
        ids, source = calibration_batch(model, ctx)
        ids = ids.to(te.device)
        # Block by block, as in Wanda: each block is calibrated on the outputs of the blocks
        # before it *after* they were pruned, so errors are seen and not compounded blindly.
        x = model.transformer.wte(ids) + model.transformer.wpe(
            torch.arange(ids.shape[1], device=ids.device))
        for block in model.transformer.h:
            layers = [block.attn.c_attn, block.attn.c_proj, block.mlp.c_fc, block.mlp.c_proj]
            sq_norms = {id(m): torch.zeros(m.weight.shape[0], device=te.device) for m in layers}

            def record(module, inputs, _output):
                a = inputs[0].reshape(-1, inputs[0].shape[-1]).float()
                sq_norms[id(module)] += a.pow(2).sum(dim=0)

            hooks = [m.register_forward_hook(record) for m in layers]
            block(x)
            for h in hooks:
                h.remove()
            for m in layers:
                score = m.weight.abs() * sq_norms[id(m)].sqrt().to(m.weight.dtype)[:, None]
                zero_smallest(m.weight, score, self.sparsity, dim=0)  # per output column
            x = block(x)
        te.notes.append(f"prune-wanda: {self.sparsity:.0%} of each output's inputs zeroed by "
                        f"|w| x ||x||_2, calibrated on {source} (overall "
                        f"{sparsity_of(te):.1%}); {DENSE_NOTE}")
        return te


class PruneStructured(Pass):
    name = "prune-structured"
    summary = "structured: remove the least important MLP neurons of every block (smaller model)"
    param = "fraction of each block's MLP neurons removed, between 0 and 1"
    default = "0.3"
    tolerance = None

    def parse(self, arg: str | None) -> None:
        self.fraction = parse_fraction(self.name, arg)

    @torch.no_grad()
    def apply(self, engine: Engine, ctx: PassContext) -> Engine:
        te = require_torch_engine(engine, self.name)
        projections(te, self.name)
        model = te.model
        before = model.num_params()
        kept = []
        for block in model.transformer.h:
            fc, proj = block.mlp.c_fc, block.mlp.c_proj  # (C, H), (H, C)
            hidden = fc.weight.shape[1]
            keep_n = max(1, hidden - round(self.fraction * hidden))
            # a neuron matters by how much it can read (c_fc column) times how much it writes
            # (c_proj row)
            importance = fc.weight.norm(dim=0) * proj.weight.norm(dim=1)
            keep = torch.topk(importance, keep_n).indices.sort().values
            fc.weight = nn.Parameter(fc.weight[:, keep].contiguous())
            if fc.bias is not None:
                fc.bias = nn.Parameter(fc.bias[keep].contiguous())
            proj.weight = nn.Parameter(proj.weight[keep, :].contiguous())
            kept.append((keep_n, hidden))
        widths = sorted({f"{k}/{h}" for k, h in kept})
        te.notes.append(f"prune-structured: MLP neurons kept per block {', '.join(widths)} "
                        f"(ranked by |c_fc column| x |c_proj row|); parameters {before:,} -> "
                        f"{model.num_params():,}")
        return te


class Prune2to4(Pass):
    name = "prune-2to4"
    summary = "2:4 semi-structured: 2 of every 4 consecutive inputs zero (sparse tensor cores)"
    tolerance = None

    @torch.no_grad()
    def apply(self, engine: Engine, ctx: PassContext) -> Engine:
        te = require_torch_engine(engine, self.name)
        layers = projections(te, self.name)
        for name, m in layers:
            apply_2to4(m.weight, name)
        if not te.device.startswith("cuda"):
            te.notes.append(f"prune-2to4: 2:4 pattern along the inputs of {len(layers)} block "
                            "weight matrices, kept as a masked dense model: this device has no "
                            "2:4 kernels, so no speedup here; NVIDIA sparse tensor cores "
                            "(Ampere and later) do half the multiply-adds of these matmuls, "
                            "at most 2x faster (theoretical)")
            return te
        return _to_semi_structured(te, len(layers))


def apply_2to4(w: torch.Tensor, name: str = "weight") -> None:
    """Keep the 2 largest |w| of every 4 consecutive inputs, per output; w is (in, out)."""
    n_in, n_out = w.shape
    if n_in % 4:
        raise PassError(f"prune-2to4 needs input widths divisible by 4; {name} has {n_in}")
    groups = w.view(n_in // 4, 4, n_out)
    drop = torch.topk(groups.abs(), 2, dim=1, largest=False).indices
    groups.scatter_(1, drop, 0.0)


def _to_semi_structured(te: TorchEngine, n_layers: int) -> TorchEngine:
    from torch.sparse import to_sparse_semi_structured

    model = te.model
    linearize(model, untie_lm_head=False)
    cast = ""
    if te.dtype == torch.float32:
        model.to(torch.float16)  # for fp32 the kernels do 1:2, not 2:4
        cast = "; model cast to fp16 (2:4 kernels take half precision)"
    dense = []
    for name, parent, attr in block_projections(model):
        lin = getattr(parent, attr).linear
        try:
            lin.weight = nn.Parameter(to_sparse_semi_structured(lin.weight))
        except RuntimeError as e:  # shapes the kernels cannot take stay dense
            dense.append(f"{name} ({e})")
    te.notes.append(f"prune-2to4: {n_layers - len(dense)} of {n_layers} block weight matrices "
                    f"stored 2:4-compressed (torch.sparse.to_sparse_semi_structured){cast}"
                    + (f"; left dense: {'; '.join(dense)}" if dense else ""))
    return te
