"""Checkpoints: atomic save, load round trip, and a resumed run that continues bit for bit."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch

from mtp_trainer import checkpoint, data, mtp_modes, tokenizer
from mtp_trainer.config import DataConfig, MetricsConfig, ModelConfig, OptimConfig, ScheduleConfig, TrainerConfig
from mtp_trainer.metrics import Metrics
from mtp_trainer.train_loop import Trainer, build_optimizer

from .conftest import build_model


def _convs(n: int = 40) -> list:
    return [
        [
            {"role": "user", "content": f"Count from {i}."},
            {"role": "assistant", "content": " ".join(str(i + k) for k in range(12))},
        ]
        for i in range(n)
    ]


@pytest.fixture(scope="module")
def tok():
    return tokenizer.train_bpe(data.corpus_text(_convs()), 300)


def _trainer(cfg: TrainerConfig, tok, out: Path) -> Trainer:
    model = build_model(cfg.model, seed=cfg.seed, scale=cfg.mtp.loss_scaling_factor)
    mtp_modes.prepare(model, cfg.mtp.mode)
    rows = data.pack(_convs(), tok, cfg.data.seq_length, cfg.data.seed)
    sched = data.BatchSchedule(rows, cfg.data.micro_batch_size, cfg.data.grad_accum_steps, seed=cfg.data.seed)
    return Trainer(
        cfg, model, build_optimizer(model, cfg), sched, None, Metrics(cfg.metrics, out), torch.device("cpu"), out, tok
    )


@pytest.mark.parametrize("mode", [mtp_modes.STANDALONE, mtp_modes.JOINT])
def test_resume_is_bit_for_bit(dist_env, tok, tmp_path: Path, mode: str) -> None:
    cfg = TrainerConfig(
        model=ModelConfig(vocab_size=300),
        optim=OptimConfig(learning_rate=3e-3, warmup_steps=2, max_steps=6, weight_decay=0.01),
        data=DataConfig(seq_length=32, micro_batch_size=2, grad_accum_steps=2),
        schedule=ScheduleConfig(save_steps=3, eval_steps=100),
        metrics=MetricsConfig(port=0),
    )
    cfg = replace(cfg, mtp=replace(cfg.mtp, mode=mode))
    straight = _trainer(cfg, tok, tmp_path / "a")
    hist_a = straight.run(0)

    first = _trainer(replace(cfg, optim=replace(cfg.optim, max_steps=3)), tok, tmp_path / "b")
    first.run(0)
    ckpt = checkpoint.latest(tmp_path / "b")
    assert ckpt is not None and ckpt.name == "step_3"
    assert not list((tmp_path / "b" / "checkpoints").glob(".*"))  # no tmp dirs left behind

    resumed = _trainer(cfg, tok, tmp_path / "b")
    assert checkpoint.load(ckpt, resumed.model, resumed.optimizer)["step"] == 3
    hist_b = resumed.run(3)

    assert [r.lm_loss for r in hist_b] == [r.lm_loss for r in hist_a[3:]]
    assert [r.mtp_loss for r in hist_b] == [r.mtp_loss for r in hist_a[3:]]
    for (n, p), (_, q) in zip(straight.model.named_parameters(), resumed.model.named_parameters(), strict=True):
        assert torch.equal(p, q), n


def test_checkpoint_round_trip_includes_frozen_mtp(dist_env, tok, tmp_path: Path) -> None:
    cfg = TrainerConfig(model=ModelConfig(vocab_size=300), metrics=MetricsConfig(port=0))
    cfg = replace(cfg, mtp=replace(cfg.mtp, mode=mtp_modes.DISABLED))
    tr = _trainer(cfg, tok, tmp_path)
    path = tr.save(7)
    other = build_model(cfg.model, seed=123)
    checkpoint.load(path, other, None)
    ref = tr.model.state_dict()
    for n, t in other.state_dict().items():
        if "_extra_state" not in n:
            assert torch.equal(t, ref[n]), n
    assert any(k.startswith("mtp.") for k in ref)
    assert (path / "tokenizer.json").is_file()
