"""Every shipped example is a valid MTPTrainingJob."""

from __future__ import annotations

from pathlib import Path

import pytest

from mtp_api import types as t
from mtp_api import validation as v
from mtpjob.cli import main as cli_main

from .conftest import EXAMPLES


def test_examples_exist() -> None:
    names = {p.name for p in EXAMPLES}
    assert {"tiny-sft.yaml", "tiny-rlvr.yaml", "qwen3.5-27b-rlvr.yaml", "qwen3.5-35b-a3b-rlvr.yaml",
            "qwen3.5-7b-sft.yaml"} <= names  # fmt: skip


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_is_valid(path: Path) -> None:
    """Every shipped example validates, the 27B one with pipeline parallel 2 included."""
    (report,) = v.validate_file(path)
    assert report.errors == [], [str(e) for e in report.errors]


def test_27b_example_layout() -> None:
    obj = v.load_documents(next(p for p in EXAMPLES if p.name == "qwen3.5-27b-rlvr.yaml"))[0]
    job = t.MTPTrainingJob.model_validate(obj)
    tr = job.spec.trainer
    assert (
        tr.replicas * tr.gpus_per_replica,
        tr.strategy.tensor_parallel_size,
        tr.strategy.pipeline_parallel_size,
    ) == (32, 4, 2)
    assert tr.mtp.training_mode == "standalone"
    assert job.spec.rollout is not None and job.spec.rollout.tensor_parallel_size == 4
    assert job.spec.rollout.speculative.num_speculative_tokens == 3


def test_cli_validates_all_examples() -> None:
    assert cli_main(["validate", *map(str, EXAMPLES)]) == 0
