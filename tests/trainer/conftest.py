"""Shared fixtures: one gloo process group + Megatron parallel state per test session."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

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


SFT_JOB = """\
apiVersion: mtp.io/v1alpha1
kind: MTPTrainingJob
metadata: {name: trainer-test-sft}
spec:
  pipeline: sft
  model:
    source: {tiny: {hiddenSize: 64, numLayers: 2, numAttentionHeads: 2, numKeyValueHeads: 1,
                    ffnHiddenSize: 192, vocabSize: 512}}
    family: qwen3_next
    dtype: float32
    mtpNumLayers: 1
  trainer:
    gpusPerReplica: 0
    mtp: {trainingMode: joint, lossScalingFactor: 0.3}
    hyperparameters: {learningRate: 3.0e-3, minLearningRate: 3.0e-4, warmupSteps: 10, microBatchSize: 8,
                      globalBatchSize: 8, seqLength: 128, maxSteps: 150, saveSteps: 75, evalSteps: 75}
    data: {trainFiles: ["builtin:pydoc-topics"]}
"""


@pytest.fixture(scope="session")
def sft_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One real training run through the entry point (subprocess): 150 joint steps of a tiny
    Qwen3-Next-layout model on the pydoc corpus. Its outputs feed the loss, export and vLLM tests."""
    root = tmp_path_factory.mktemp("sft")
    job = root / "job.yaml"
    job.write_text(SFT_JOB)
    out = root / "out"
    proc = subprocess.run(
        [sys.executable, "-m", "mtp_trainer.main", "--job", str(job), "--output-dir", str(out), "--metrics-port", "0"],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return out
