"""`gpteval train`: the small training loop that makes the bundled model.

AdamW, linear warm-up then cosine decay to 10 % of the peak rate, fixed seed, random
windows of the bundled train split; the validation split is scored every `eval_every`
steps and the checkpoint written at the end carries its own model card data.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from . import corpus
from .model import GPT, GPTConfig, preset_config
from .tokenizer import ByteTokenizer
from .weights import save_checkpoint


@dataclass
class TrainConfig:
    preset: str = "tiny"
    steps: int = 1000
    batch_size: int = 16
    block_size: int = 256
    lr: float = 3e-3
    min_lr_frac: float = 0.1
    warmup: int = 50
    weight_decay: float = 0.1
    dropout: float = 0.0  # 0.1 made CPU steps 5x slower (SDPA falls back to the math kernel)
    grad_clip: float = 1.0
    eval_every: int = 100
    seed: int = 1337
    threads: int = 0  # 0: torch's default
    eval_tokens: int = 0  # score at most this many tokens of validation/test (0: all)


def lr_at(step: int, cfg: TrainConfig) -> float:
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    progress = min(1.0, (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup))
    floor = cfg.lr * cfg.min_lr_frac
    return floor + 0.5 * (cfg.lr - floor) * (1 + math.cos(math.pi * progress))


def _batch(data: torch.Tensor, cfg: TrainConfig, gen: torch.Generator):
    ix = torch.randint(len(data) - cfg.block_size - 1, (cfg.batch_size,), generator=gen)
    x = torch.stack([data[i:i + cfg.block_size] for i in ix])
    y = torch.stack([data[i + 1:i + 1 + cfg.block_size] for i in ix])
    return x, y


@torch.no_grad()
def eval_loss(model: GPT, data: torch.Tensor, block: int, max_tokens: int = 0) -> float:
    """Mean next-byte cross-entropy (nats) over non-overlapping windows of `data`."""
    if max_tokens:
        data = data[: max_tokens + 1]
    model.eval()
    total, count = 0.0, 0
    for i in range(0, len(data) - 1, block):
        x = data[i:i + block]
        y = data[i + 1:i + 1 + block]
        x = x[: len(y)]
        if len(y) == 0:
            break
        _, loss = model(x[None], y[None])
        total += loss.item() * len(y)
        count += len(y)
    model.train()
    return total / count


def train(cfg: TrainConfig, out_dir: str | Path, log=print) -> dict:
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    tok = ByteTokenizer()
    train_ids = torch.tensor(tok.encode(corpus.split_text("train")), dtype=torch.long)
    val_ids = torch.tensor(tok.encode(corpus.split_text("validation")), dtype=torch.long)
    base = preset_config(cfg.preset)
    mcfg = GPTConfig(**{**base.to_dict(), "dropout": cfg.dropout, "n_positions": cfg.block_size})
    model = GPT(mcfg)
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}],
                            lr=cfg.lr, betas=(0.9, 0.95))
    gen = torch.Generator().manual_seed(cfg.seed)
    history = []
    t0 = time.perf_counter()
    model.train()
    for step in range(cfg.steps):
        for g in opt.param_groups:
            g["lr"] = lr_at(step, cfg)
        x, y = _batch(train_ids, cfg, gen)
        _, loss = model(x, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        if (step + 1) % cfg.eval_every == 0 or step + 1 == cfg.steps:
            vl = eval_loss(model, val_ids, cfg.block_size, cfg.eval_tokens)
            elapsed = time.perf_counter() - t0
            history.append({"step": step + 1, "train_loss": loss.item(), "val_loss": vl,
                            "val_bpb": vl / math.log(2), "minutes": elapsed / 60})
            log(f"step {step + 1}/{cfg.steps} train {loss.item():.4f} val {vl:.4f} "
                f"({vl / math.log(2):.3f} bpb) {elapsed / 60:.1f} min")
    model.eval()
    model.config.dropout = 0.0
    model.config.name = cfg.preset
    test_ids = torch.tensor(tok.encode(corpus.split_text("test")), dtype=torch.long)
    test_loss = eval_loss(model, test_ids, cfg.block_size, cfg.eval_tokens)
    meta = {
        "trained": True,
        "train_config": asdict(cfg),
        "params": model.num_params(),
        "bytes_seen": cfg.steps * cfg.batch_size * cfg.block_size,
        "train_minutes": round((time.perf_counter() - t0) / 60, 2),
        "threads": torch.get_num_threads(),
        "val_loss": history[-1]["val_loss"] if history else None,
        "test_bpb": test_loss / math.log(2),
        "history": history,
        "corpus_sha256": corpus.text_sha256(corpus.corpus_text()),
    }
    save_checkpoint(model, out_dir, meta)
    log(f"test bits-per-byte {meta['test_bpb']:.4f}; checkpoint written to {out_dir}")
    return meta
