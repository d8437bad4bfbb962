"""Shared fixtures: one gloo process group + Megatron parallel state per test session."""

from __future__ import annotations

import pytest
import torch

from mtp_trainer import distributed
from mtp_trainer.config import ModelConfig
from mtp_trainer.model_provider import ModelProvider


@pytest.fixture(scope="session")
def dist_env() -> distributed.DistInfo:
    info = distributed.init(1, 1, seed=1234)
    yield info
    distributed.shutdown()


def build_model(model_cfg: ModelConfig, seed: int = 0, scale: float = 0.3) -> torch.nn.Module:
    """A fresh GPTModel with a deterministic init (Megatron's CPU init draws from torch's RNG)."""
    torch.manual_seed(seed)
    return ModelProvider(model_cfg, mtp_loss_scaling_factor=scale).provide()
