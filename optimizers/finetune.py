"""Recovery fine-tuning: a few AdamW steps on training tokens after pruning.

Pruned weights stay pruned: every block weight that is zero before the pass has its
gradient masked and is re-zeroed after each step, so unstructured and 2:4 patterns
survive (structured pruning removed its weights outright, so it needs no mask).
Training runs in fp32 with a fixed seed; the model is returned in eval mode, in the
dtype it came in.
"""

from __future__ import annotations

import torch

from gpteval.engine import Engine

from .base import (
    Pass,
    PassContext,
    PassError,
    PassSkipped,
    parse_int,
    require_torch_engine,
)
from .prune import projections

LR = 1e-4
BATCH = 8
SEQ_LEN = 128
EVAL_WINDOWS = 8


class Finetune(Pass):
    name = "finetune"
    summary = "recovery fine-tuning on training tokens (AdamW), pruned weights kept at zero"
    param = "number of optimizer steps"
    default = "100"
    tolerance = None

    def parse(self, arg: str | None) -> None:
        self.steps = parse_int(self.name, arg, lo=1, hi=100_000)

    def apply(self, engine: Engine, ctx: PassContext) -> Engine:
        te = require_torch_engine(engine, self.name)
        if ctx.train_ids is None:
            raise PassSkipped("fine-tuning needs training data, and a preset with random "
                              "weights has none (nothing to recover); use the bundled model "
                              "or a Hugging Face checkpoint")
        layers = projections(te, self.name)  # also rejects quantized/sparse weights
        ids = ctx.train_ids().long().flatten()
        model = te.model
        seq = min(SEQ_LEN, model.config.n_positions, ids.numel() - 1)
        if seq < 8:
            raise PassError(f"finetune needs more training tokens than the {ids.numel()} given")
        dtype = te.dtype
        model.float()
        masks = [(m.weight, m.weight != 0) for _, m in layers]
        gen = torch.Generator().manual_seed(ctx.seed)

        def windows(n: int) -> tuple[torch.Tensor, torch.Tensor]:
            starts = torch.randint(0, ids.numel() - seq - 1, (n,), generator=gen).tolist()
            x = torch.stack([ids[s:s + seq] for s in starts]).to(te.device)
            y = torch.stack([ids[s + 1:s + seq + 1] for s in starts]).to(te.device)
            return x, y

        held_x, held_y = windows(EVAL_WINDOWS)  # the same windows before and after
        loss_before = _loss(model, held_x, held_y)
        params = list({id(p): p for p in model.parameters()}.values())  # tied weights once
        opt = torch.optim.AdamW(params, lr=LR, weight_decay=0.0)
        torch.manual_seed(ctx.seed)
        model.train()
        for _ in range(self.steps):
            x, y = windows(BATCH)
            _, loss = model(x, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            for w, mask in masks:
                w.grad.mul_(mask)
            opt.step()
            with torch.no_grad():
                for w, mask in masks:
                    w.mul_(mask)
        model.eval()
        opt.zero_grad(set_to_none=True)
        loss_after = _loss(model, held_x, held_y)
        model.to(dtype)
        kept = sum(int((~mask).sum()) for _, mask in masks)
        te.notes.append(f"finetune: {self.steps} AdamW steps (lr {LR}, {BATCH}x{seq} tokens, "
                        f"seed {ctx.seed}) on training tokens; loss on {EVAL_WINDOWS} training "
                        f"windows {loss_before:.3f} -> {loss_after:.3f}; {kept:,} zero weights "
                        "kept at zero")
        return te


@torch.no_grad()
def _loss(model, x: torch.Tensor, y: torch.Tensor) -> float:
    model.eval()
    return float(model(x, y)[1])
