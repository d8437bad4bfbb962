"""At least 20 distinct bad manifests, each rejected by the CRD schema + CEL evaluation (what the
API server does on `kubectl apply`) and by `mtpjob validate`, with the offending field named."""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from mtp_api import validation as v
from mtpjob.cli import main as cli_main

Mutation = Callable[[dict[str, Any]], None]


def _set(path: str, value: Any) -> Mutation:
    def apply(obj: dict[str, Any]) -> None:
        node = obj
        parts = path.split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = value

    return apply


def _del(path: str) -> Mutation:
    def apply(obj: dict[str, Any]) -> None:
        node = obj
        parts = path.split(".")
        for p in parts[:-1]:
            node = node[p]
        del node[parts[-1]]

    return apply


def _all(*ms: Mutation) -> Mutation:
    def apply(obj: dict[str, Any]) -> None:
        for m in ms:
            m(obj)

    return apply


# (id, mutation of examples/tiny-sft.yaml, field path the error must name, a word of the message)
BAD: list[tuple[str, Mutation, str, str]] = [
    ("wrong-enum-mode", _set("spec.trainer.mtp.trainingMode", "both"), "spec.trainer.mtp.trainingMode", "supported"),
    ("wrong-enum-pipeline", _set("spec.pipeline", "dpo"), "spec.pipeline", "supported"),
    ("zero-k", _set("spec.rollout.speculative.numSpeculativeTokens", 0),
     "spec.rollout.speculative.numSpeculativeTokens", "1-16 or auto"),
    ("negative-k", _set("spec.rollout.speculative.numSpeculativeTokens", -2),
     "spec.rollout.speculative.numSpeculativeTokens", "1-16 or auto"),
    ("k-word", _set("spec.rollout.speculative.numSpeculativeTokens", "fast"),
     "spec.rollout.speculative.numSpeculativeTokens", "1-16 or auto"),
    ("auto-k-without-calibration", _set("spec.rollout.speculative.numSpeculativeTokens", "auto"),
     "spec.rollout.speculative.calibration", "bench-rollout --calibrate"),
    ("missing-mtp-layers-for-joint", _all(_del("spec.model.mtpNumLayers"), _set("spec.rollout.speculative.method", "none")),
     "spec.model.mtpNumLayers", "trainingMode"),
    ("missing-mtp-layers-for-spec", _all(_del("spec.model.mtpNumLayers"), _set("spec.trainer.mtp.trainingMode", "disabled")),
     "spec.model.mtpNumLayers", "method mtp"),
    ("tp-pp-not-dividing-gpus", _all(_set("spec.trainer.gpusPerReplica", 6), _set("spec.trainer.strategy", {
        "tensorParallelSize": 4, "pipelineParallelSize": 1})), "spec.trainer.strategy", "divisible"),
    ("rlvr-without-reward", _set("spec.pipeline", "rlvr"), "spec.pipeline", "spec.reward"),
    ("rlvr-without-rollout", _all(_set("spec.pipeline", "rlvr"), _set("spec.reward", {"type": "math"}),
                                  _del("spec.rollout")), "spec.pipeline", "spec.rollout"),
    ("unknown-field", _set("spec.trainer.mtp.lossScale", 0.3), "spec.trainer.mtp.lossScale", "unknown field"),
    ("unknown-top-level-spec-field", _set("spec.rewards", {}), "spec.rewards", "unknown field"),
    ("wrong-type", _set("spec.trainer.replicas", "two"), "spec.trainer.replicas", "type integer"),
    ("empty-name", _set("metadata.name", ""), "metadata.name", "Required"),
    ("name-too-long", _set("metadata.name", "a" * 50), "metadata.name", "40"),
    ("loss-scaling-out-of-range", _set("spec.trainer.mtp.lossScalingFactor", 11.0),
     "spec.trainer.mtp.lossScalingFactor", "<= 10"),
    ("loss-scaling-negative", _set("spec.trainer.mtp.lossScalingFactor", -0.1),
     "spec.trainer.mtp.lossScalingFactor", ">= 0"),
    ("two-model-sources", _set("spec.model.source.path", "/models/x"), "spec.model.source", "exactly one"),
    ("no-model-source", _set("spec.model.source", {}), "spec.model.source", "exactly one"),
    ("missing-train-files", _del("spec.trainer.data.trainFiles"), "spec.trainer.data.trainFiles", "Required"),
    ("empty-train-files", _set("spec.trainer.data.trainFiles", []), "spec.trainer.data.trainFiles", "at least 1"),
    ("sequence-parallel-without-tp", _set("spec.trainer.strategy", {"sequenceParallel": True}),
     "spec.trainer.strategy.sequenceParallel", "tensorParallelSize"),
    ("global-batch-not-multiple-of-micro", _set("spec.trainer.hyperparameters.globalBatchSize", 12),
     "spec.trainer.hyperparameters.globalBatchSize", "multiple"),
    ("max-tokens-over-model-len", _set("spec.rollout.generation.maxTokens", 4096),
     "spec.rollout.generation.maxTokens", "maxModelLen"),
    ("gpu-memory-utilization-over-1", _set("spec.rollout.gpuMemoryUtilization", 1.5),
     "spec.rollout.gpuMemoryUtilization", "<= 1"),
    ("rollout-tp-on-cpu", _set("spec.rollout.tensorParallelSize", 2), "spec.rollout.tensorParallelSize", "CPU"),
    ("negative-backoff", _set("spec.runPolicy", {"backoffLimit": -1}), "spec.runPolicy.backoffLimit", ">= 0"),
    ("bad-dtype", _set("spec.model.dtype", "fp8"), "spec.model.dtype", "supported"),
    ("mtp-layers-too-many", _set("spec.model.mtpNumLayers", 9), "spec.model.mtpNumLayers", "<= 8"),
    ("bad-pvc-claim-name", _set("spec.model.source", {"pvc": {"claimName": "Models_Bad"}}),
     "spec.model.source.pvc.claimName", "must match"),
    ("tiny-heads-not-dividing", _set("spec.model.source.tiny.numKeyValueHeads", 3),
     "spec.model.source.tiny.numKeyValueHeads", "multiple"),
    ("learning-rate-zero", _set("spec.trainer.hyperparameters.learningRate", 0), "spec.trainer.hyperparameters.learningRate", "> 0"),
    ("sft-rollout-without-checkpoint-volume", _del("spec.trainer.volumes"), "spec.trainer.volumes", "ReadWriteMany"),
    ("resources-not-quantity", _set("spec.trainer.resources", {"limits": {"cpu": [1]}}),
     "spec.trainer.resources.limits.cpu", "integer or string"),
]  # fmt: skip


# Rejected by `mtpjob validate` only: these need knowledge CEL does not have (vLLM's CPU kernels,
# what a family's checkpoints can hold). The operator applies the same checks before building.
SEMANTIC: list[tuple[str, Mutation, str, str]] = [
    ("cpu-rollout-head-dim", _set("spec.model.source.tiny.numAttentionHeads", 8), "spec.model.source.tiny.hiddenSize",
     "vLLM's CPU attention"),
    ("two-mtp-layers-for-qwen3-next", _set("spec.model.mtpNumLayers", 2), "spec.model.mtpNumLayers", "one MTP layer"),
    ("global-batch-vs-data-parallel", _all(_set("spec.trainer.replicas", 3),
                                           _set("spec.trainer.hyperparameters.globalBatchSize", 16)),
     "spec.trainer.hyperparameters.globalBatchSize", "multiple of 24"),
]  # fmt: skip


def _mutated(base: dict[str, Any], mutation: Mutation) -> dict[str, Any]:
    obj = copy.deepcopy(base)
    mutation(obj)
    return obj


def test_there_are_at_least_twenty_distinct_bad_manifests(tiny_sft: dict[str, Any]) -> None:
    rendered = {yaml.safe_dump(_mutated(tiny_sft, m), sort_keys=True) for _, m, _, _ in BAD}
    assert len(rendered) == len(BAD) >= 20


@pytest.mark.parametrize(("case", "mutation", "field", "word"), BAD, ids=[b[0] for b in BAD])
def test_api_server_evaluation_rejects(
    tiny_sft: dict[str, Any], case: str, mutation: Mutation, field: str, word: str
) -> None:
    """Schema (with kubectl's strict field validation) then CEL, as the API server applies them."""
    obj = _mutated(tiny_sft, mutation)
    meta_ok = isinstance(obj["metadata"].get("name"), str) and obj["metadata"]["name"] != ""
    defaulted = v.apply_defaults(v.open_api_schema(), obj)
    findings = v.schema_errors(defaulted)
    if not findings:
        findings = v.cel_errors(defaulted)
    if not meta_ok:
        # metadata.name emptiness is the API server's own ObjectMeta check, outside the CRD schema
        findings = v.validate_object(obj).errors
    assert findings, f"{case}: accepted"
    assert any(f.path == field and word in f.message for f in findings), [str(f) for f in findings]


@pytest.mark.parametrize(("case", "mutation", "field", "word"), BAD, ids=[b[0] for b in BAD])
def test_cli_validate_rejects(
    tiny_sft: dict[str, Any], case: str, mutation: Mutation, field: str, word: str, tmp_path: Path, capsys: Any
) -> None:
    path = tmp_path / f"{case}.yaml"
    path.write_text(yaml.safe_dump(_mutated(tiny_sft, mutation)))
    rc = cli_main(["validate", str(path)])
    out = capsys.readouterr().out
    assert rc == 2, out
    assert f"error: {field}:" in out and word in out, out


@pytest.mark.parametrize(("case", "mutation", "field", "word"), SEMANTIC, ids=[b[0] for b in SEMANTIC])
def test_semantic_checks_cel_cannot_express(
    tiny_sft: dict[str, Any], case: str, mutation: Mutation, field: str, word: str, tmp_path: Path, capsys: Any
) -> None:
    obj = _mutated(tiny_sft, mutation)
    defaulted = v.apply_defaults(v.open_api_schema(), obj)
    assert v.schema_errors(defaulted) == [] and v.cel_errors(defaulted) == [], f"{case}: CEL caught it"
    report = v.validate_object(obj)
    assert [f.path for f in report.errors] == [field] and word in report.errors[0].message
    path = tmp_path / f"{case}.yaml"
    path.write_text(yaml.safe_dump(obj))
    assert cli_main(["validate", str(path)]) == 2
    assert f"error: {field}:" in capsys.readouterr().out


def test_warnings_are_not_errors(tiny_sft: dict[str, Any], tmp_path: Path, capsys: Any) -> None:
    obj = _mutated(tiny_sft, _set("spec.trainer.mtp.trainingMode", "standalone"))
    path = tmp_path / "standalone-sft.yaml"
    path.write_text(yaml.safe_dump(obj))
    assert cli_main(["validate", str(path)]) == 0
    out = capsys.readouterr().out
    assert "warning: spec.trainer.mtp.trainingMode: standalone with sft is allowed but unusual" in out
    assert cli_main(["validate", "--strict", str(path)]) == 2


def test_pipeline_is_immutable_on_update(tiny_sft: dict[str, Any]) -> None:
    new = _mutated(
        tiny_sft,
        _all(
            _set("spec.pipeline", "rlvr"),
            _set("spec.reward", {"type": "math"}),
            _set("spec.trainer.data.trainFiles", ["builtin:arithmetic"]),
        ),
    )
    assert v.validate_object(new).ok  # a fresh create is fine
    errors = v.validate_object(new, old=tiny_sft).errors
    assert [(e.path, e.message) for e in errors] == [
        ("spec.pipeline", "pipeline is immutable; create a new job instead"),
        (  # the trainFiles edit, on a job that is not suspended
            "spec.trainer",
            "spec.model and spec.trainer cannot change while the job runs; suspend it first "
            "(runPolicy.suspend: true), then edit",
        ),
    ]


def test_unreadable_files_are_clear_errors(tmp_path: Path, capsys: Any) -> None:
    broken = tmp_path / "broken.yaml"
    broken.write_text("spec: [unclosed\n")
    scalar = tmp_path / "scalar.yaml"
    scalar.write_text("just a string\n")
    assert cli_main(["validate", str(tmp_path / "missing.yaml"), str(broken), str(scalar)]) == 2
    out = capsys.readouterr().out
    assert "missing.yaml: no such file" in out
    assert "broken.yaml: not valid YAML" in out
    assert "scalar.yaml: document 0 is a string, expected a mapping" in out


def test_wrong_kind_is_named(tiny_sft: dict[str, Any]) -> None:
    errors = v.validate_object({**tiny_sft, "kind": "PyTorchJob"}).errors
    assert errors[0].path == "apiVersion/kind" and "MTPTrainingJob" in errors[0].message


def test_config_json_fills_and_checks_mtp_layers(tiny_sft: dict[str, Any], tmp_path: Path) -> None:
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    (ckpt / "config.json").write_text('{"architectures": ["Qwen3NextForCausalLM"], "num_nextn_predict_layers": 1}')
    obj = copy.deepcopy(tiny_sft)
    obj["spec"]["model"]["source"] = {"path": "ckpt"}
    del obj["spec"]["model"]["mtpNumLayers"]
    report = v.validate_object(obj, base_dir=tmp_path)
    assert report.ok, report.errors
    assert report.job is not None and report.job.spec.model.mtp_num_layers == 1
    obj["spec"]["model"]["mtpNumLayers"] = 3
    errors = v.validate_object(obj, base_dir=tmp_path).errors
    assert errors and errors[0].path == "spec.model.mtpNumLayers" and "config.json says 1" in errors[0].message
