"""The training loop that makes the bundled model: seeded, writes a loadable checkpoint
that carries its own model-card data."""

import math

import torch

from gpteval.train import TrainConfig, lr_at, train
from gpteval.weights import load_model


def test_lr_schedule_warms_up_then_decays_to_floor():
    cfg = TrainConfig(steps=100, warmup=10, lr=1e-3, min_lr_frac=0.1)
    assert lr_at(0, cfg) == 1e-3 / 10
    assert lr_at(9, cfg) == 1e-3
    assert math.isclose(lr_at(100, cfg), 1e-4)
    assert lr_at(50, cfg) < lr_at(20, cfg)


def test_train_is_seeded_and_writes_a_checkpoint(tmp_path):
    cfg = TrainConfig(steps=3, batch_size=2, block_size=32, eval_every=3, warmup=1, threads=1,
                      eval_tokens=256)
    logs = []
    meta = train(cfg, tmp_path / "a", log=logs.append)
    train(cfg, tmp_path / "b", log=lambda s: None)
    a, b = load_model(str(tmp_path / "a")), load_model(str(tmp_path / "b"))
    assert a.trained and a.source == "checkpoint"
    for (name, pa), pb in zip(a.model.state_dict().items(), b.model.state_dict().values()):
        assert torch.equal(pa, pb), name
    assert meta["bytes_seen"] == 3 * 2 * 32
    assert 0 < meta["test_bpb"] < 9 and len(meta["history"]) == 1
    assert any("test bits-per-byte" in line for line in logs)
