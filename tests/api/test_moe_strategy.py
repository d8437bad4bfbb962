"""The mixture-of-experts job: ``spec.model.source.tiny.moe``, the ``qwen3_5_moe`` family and
``spec.trainer.strategy.expertParallelSize`` (schema, CEL as the API server runs it, and the
capability refusals that ``mtpjob validate``, admission and the trainer share)."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from mtp_api import types as t
from mtp_api import validation as v

MOE = {"numExperts": 4, "numExpertsPerTok": 2, "moeIntermediateSize": 64, "sharedExpertIntermediateSize": 64}


def _moe_job(tiny_sft: dict[str, Any], **strategy: Any) -> dict[str, Any]:
    obj = copy.deepcopy(tiny_sft)
    obj["spec"]["model"]["source"]["tiny"]["moe"] = dict(MOE)
    obj["spec"]["trainer"]["strategy"] = strategy
    return obj


def _replicas(obj: dict[str, Any], n: int) -> dict[str, Any]:
    """``n`` CPU trainer processes (data parallel n), the global batch kept at one micro-batch per rank."""
    obj["spec"]["trainer"]["replicas"] = n
    hp = obj["spec"]["trainer"]["hyperparameters"]
    hp["globalBatchSize"] = hp["microBatchSize"] * n
    return obj


def _paths(obj: dict[str, Any]) -> list[str]:
    return sorted(f.path for f in v.validate_object(obj).errors)


def _cel(obj: dict[str, Any]) -> list[str]:
    defaulted = v.apply_defaults(v.open_api_schema(), obj)
    assert v.schema_errors(defaulted) == []
    return [f.path for f in v.cel_errors(defaulted)]


def test_tiny_moe_job_is_valid_and_defaults(tiny_sft: dict[str, Any]) -> None:
    obj = _moe_job(tiny_sft)
    assert _paths(obj) == []
    job = t.MTPTrainingJob.model_validate(obj)
    assert job.spec.trainer.strategy.expert_parallel_size == 1
    moe = job.spec.model.source.tiny.moe  # type: ignore[union-attr]
    assert moe is not None and (moe.norm_topk_prob, moe.router_aux_loss_coef) == (True, 0.001)
    assert t.ModelFamily.QWEN3_5_MOE in t.TRAINER_FAMILIES
    obj["spec"]["model"]["family"] = "qwen3_5_moe"
    assert _paths(obj) == []


@pytest.mark.parametrize(
    ("strategy", "replicas", "word"),
    [
        # expert parallel 2 with tensor parallel 2 over 4 ranks: expert tensor parallel groups are not built
        ({"expertParallelSize": 2, "tensorParallelSize": 2, "sequenceParallel": True}, 4, "tensorParallelSize 2"),
        ({"expertParallelSize": 3}, 3, "does not divide spec.model.source.tiny.moe.numExperts 4"),
        ({"expertParallelSize": 4}, 2, "data-parallel size"),  # CEL's message, before the capability check
    ],
)
def test_expert_parallel_refusals_name_the_field(
    tiny_sft: dict[str, Any], strategy: dict[str, int], replicas: int, word: str
) -> None:
    obj = _replicas(_moe_job(tiny_sft, **strategy), replicas)
    errors = v.validate_object(obj).errors
    assert any(f.path == "spec.trainer.strategy.expertParallelSize" and word in f.message for f in errors), [
        str(f) for f in errors
    ]


def test_expert_parallel_is_accepted_and_its_optimizer_limit_named(tiny_sft: dict[str, Any]) -> None:
    """EP 2 over 2 data-parallel ranks trains (tests/trainer/test_expert_parallel.py); the sharded
    optimizer, which assumes every data-parallel rank holds the same weights, is refused with it."""
    obj = _replicas(_moe_job(tiny_sft, expertParallelSize=2), 2)
    assert _paths(obj) == []
    obj["spec"]["trainer"]["strategy"]["distributedOptimizer"] = True
    assert _paths(obj) == ["spec.trainer.strategy.distributedOptimizer"]


def test_expert_parallel_over_data_parallel_is_a_cel_rule(tiny_sft: dict[str, Any]) -> None:
    """The API server refuses it too (the operator's typed path repeats it in the capability check)."""
    obj = _replicas(_moe_job(tiny_sft, expertParallelSize=4), 2)
    assert "spec.trainer.strategy.expertParallelSize" in _cel(obj)
    assert _cel(_moe_job(tiny_sft)) == []


def test_other_moe_refusals(tiny_sft: dict[str, Any]) -> None:
    dense = _replicas(copy.deepcopy(tiny_sft), 2)
    dense["spec"]["trainer"]["strategy"] = {"expertParallelSize": 2}
    assert _paths(dense) == ["spec.trainer.strategy.expertParallelSize"]  # no experts to split

    tp = _replicas(_moe_job(tiny_sft, tensorParallelSize=2), 2)
    tp["spec"]["trainer"]["hyperparameters"]["globalBatchSize"] = 8  # data parallel 1
    assert _paths(tp) == ["spec.trainer.strategy.sequenceParallel"]  # Megatron's MoE needs SP with TP
    tp["spec"]["trainer"]["strategy"]["sequenceParallel"] = True
    assert _paths(tp) == []
    tp["spec"]["trainer"]["hyperparameters"]["seqLength"] = 127  # SP splits each sequence over 2 ranks
    assert _paths(tp) == ["spec.trainer.hyperparameters.seqLength"]

    gpu_flavour_dense = _moe_job(tiny_sft)
    gpu_flavour_dense["spec"]["model"]["family"] = "qwen3_5"
    assert _paths(gpu_flavour_dense) == ["spec.model.family"]

    no_experts = copy.deepcopy(tiny_sft)
    no_experts["spec"]["model"]["family"] = "qwen3_5_moe"
    assert _paths(no_experts) == ["spec.model.source.tiny.moe"]

    topk = _moe_job(tiny_sft)
    topk["spec"]["model"]["source"]["tiny"]["moe"]["numExpertsPerTok"] = 5
    assert "spec.model.source.tiny.moe.numExpertsPerTok" in _cel(topk)
