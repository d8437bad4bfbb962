"""Shared fixtures for the API tests: a minimal valid manifest to mutate."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((REPO / "examples").glob("*.yaml"))


@pytest.fixture
def tiny_sft() -> dict[str, Any]:
    return copy.deepcopy(yaml.safe_load((REPO / "examples" / "tiny-sft.yaml").read_text()))


@pytest.fixture
def minimal() -> dict[str, Any]:
    """The least a user must write: every other field comes from defaults."""
    return {
        "apiVersion": "mtp.io/v1alpha1",
        "kind": "MTPTrainingJob",
        "metadata": {"name": "minimal"},
        "spec": {
            "pipeline": "sft",
            "model": {"source": {"huggingFace": {"id": "Qwen/Qwen3.5-7B"}}},
            "trainer": {"data": {"trainFiles": ["/data/train.jsonl"]}},
        },
    }
