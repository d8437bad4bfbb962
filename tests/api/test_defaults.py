"""pydantic and the CRD schema default a manifest identically, and a valid example round-trips."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from mtp_api import types as t
from mtp_api import validation as v

from .conftest import EXAMPLES


def _server_defaulted(obj: dict[str, Any]) -> dict[str, Any]:
    return v.apply_defaults(v.open_api_schema(), obj)


def test_minimal_manifest_defaults_agree(minimal: dict[str, Any]) -> None:
    by_schema = _server_defaulted(minimal)["spec"]
    by_pydantic = t.MTPTrainingJobSpec.model_validate(minimal["spec"]).wire()
    assert by_schema == by_pydantic
    # spot-check values that matter
    assert by_schema["trainer"]["mtp"] == {"trainingMode": "disabled", "lossScalingFactor": 0.3}
    assert by_schema["runPolicy"]["suspend"] is False


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_examples_default_identically(path: Any) -> None:
    obj = yaml.safe_load(path.read_text())
    by_schema = _server_defaulted(obj)["spec"]
    by_pydantic = t.MTPTrainingJobSpec.model_validate(obj["spec"]).wire()
    assert by_schema == by_pydantic


def test_rollout_block_defaults_agree(minimal: dict[str, Any]) -> None:
    minimal["spec"]["rollout"] = {}
    minimal["spec"]["model"]["mtpNumLayers"] = 1
    by_schema = _server_defaulted(minimal)["spec"]["rollout"]
    by_pydantic = t.RolloutSpec.model_validate({}).wire()
    assert by_schema == by_pydantic
    assert by_schema["speculative"] == {"method": "mtp", "numSpeculativeTokens": 1}


def test_round_trip_model_schema_example(tiny_sft: dict[str, Any]) -> None:
    report = v.validate_object(tiny_sft)
    assert report.ok, report.errors
    assert report.job is not None
    again = v.validate_object(report.job.wire())
    assert again.ok, again.errors
    assert again.job == report.job


def test_status_round_trips_through_schema() -> None:
    status = t.MTPTrainingJobStatus(
        state=t.JobState.RUNNING,
        conditions=[t.Condition(type=t.ConditionType.RUNNING, status="True", reason="PodsReady")],
        observed_generation=3,
        rollout=t.RolloutStatus(ready_replicas=1, acceptance_rate=0.61, per_position_acceptance=[0.7, 0.5]),
    )
    obj = {
        "apiVersion": t.API_VERSION,
        "kind": t.KIND,
        "metadata": {"name": "s"},
        "spec": yaml.safe_load((EXAMPLES[-1]).read_text())["spec"],
        "status": status.wire(),
    }
    assert v.schema_errors(v.apply_defaults(v.open_api_schema(), obj)) == []
