"""`import-roll` on configs that mirror ROLL's published Qwen3.5 RLVR and SFT examples."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from mtp_api import roll_import as ri
from mtp_api import validation as v
from mtpjob.cli import main as cli_main

ROLL = Path(__file__).parent / "roll"


def _convert(name: str) -> ri.ImportResult:
    return ri.convert_file(ROLL / name)


def test_27b_rlvr_maps_layout_mtp_and_speculation() -> None:
    res = _convert("qwen3_5-27b-rlvr_megatron.yaml")
    spec = res.manifest["spec"]
    assert spec["pipeline"] == "rlvr"
    assert spec["model"] == {"source": {"huggingFace": {"id": "Qwen/Qwen3.5-27B"}}, "family": "qwen3_5",
                             "dtype": "bfloat16", "mtpNumLayers": 1}  # fmt: skip
    tr = spec["trainer"]
    assert (tr["replicas"], tr["gpusPerReplica"]) == (4, 8)
    assert tr["strategy"] == {"tensorParallelSize": 4, "pipelineParallelSize": 2, "sequenceParallel": True,
                              "recompute": "full", "distributedOptimizer": True}  # fmt: skip
    assert tr["mtp"] == {"trainingMode": "standalone", "lossScalingFactor": 0.3}
    # micro 1 x DP (32 / (4*2) = 4) x accumulation 32
    assert tr["hyperparameters"]["globalBatchSize"] == 128
    assert tr["hyperparameters"]["seqLength"] == 2048 + 8192
    ro = spec["rollout"]
    assert ro["speculative"] == {"method": "mtp", "numSpeculativeTokens": 3}
    assert (ro["tensorParallelSize"], ro["gpusPerReplica"], ro["replicas"]) == (4, 4, 8)
    assert ro["generation"]["maxTokens"] == 8192  # ${response_length} resolved
    assert spec["reward"] == {"type": "math"}
    # The API accepts it; validation refuses what ROLL's config leaves out (mtp_api.capabilities): a
    # checkpoints volume for the weight sync. Its pipeline parallel 2 trains.
    report = v.validate_object(res.manifest)
    assert sorted(e.path for e in report.errors) == ["spec.trainer.volumes.checkpoints"]
    unmapped = "\n".join(res.unmapped)
    # ROLL's RL settings: rollout_batch_size 64 prompts x num_return_sequences_in_group 8 = 512 samples a
    # step, trained in optimizer steps of the actor's 128 (4 mini-batches); use_kl_loss with coef 0.001.
    assert tr["grpo"] == {"promptsPerStep": 64, "samplesPerPrompt": 8, "miniBatches": 4, "klCoef": 0.001}
    assert "kl_loss_coef = 0.001" not in unmapped and "reference.device_mapping" in unmapped
    assert not any(u.startswith(("hydra", "tracker_kwargs", "logging_dir")) for u in res.unmapped)
    assert any("colocation" in n for n in res.notes)


def test_mode_inside_strategy_config_and_moe() -> None:
    res = _convert("qwen3_5-35b-a3b-rlvr_megatron.yaml")
    spec = res.manifest["spec"]
    assert spec["trainer"]["mtp"] == {"trainingMode": "standalone"}
    assert spec["model"]["family"] == "qwen3_5_moe"
    assert (spec["trainer"]["replicas"], spec["trainer"]["gpusPerReplica"]) == (2, 8)
    assert spec["rollout"]["replicas"] == 8  # list(range(16,32)) / 2 GPUs per worker
    notes = "\n".join(res.notes)
    assert "expert_model_parallel_size=8" in notes and "code_sandbox" in notes
    report = v.validate_object(res.manifest)
    assert sorted(e.path for e in report.errors) == [
        "spec.trainer.volumes.checkpoints",
    ]


def test_sft_joint_with_env_interpolation(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ROLL_EXPERIMENT_NAME", "My_SFT.Run")
    res = _convert("qwen3_5-7b-sft_megatron.yaml")
    m = res.manifest
    assert m["metadata"]["name"] == "my-sft-run"
    spec = m["spec"]
    assert spec["pipeline"] == "sft" and "rollout" not in spec
    assert spec["trainer"]["mtp"] == {"trainingMode": "joint", "lossScalingFactor": 0.3}
    assert spec["trainer"]["hyperparameters"]["globalBatchSize"] == 2 * 4 * 8
    assert spec["trainer"]["data"]["format"] == "prompt_response"
    # The config's prompt_key: instruction / response_key: output reach the data spec.
    assert (spec["trainer"]["data"]["promptKey"], spec["trainer"]["data"]["responseKey"]) == ("instruction", "output")
    assert spec["trainer"]["data"]["validationFiles"] == ["data/sft_val.jsonl"]
    assert v.validate_object(m).ok
    monkeypatch.delenv("ROLL_EXPERIMENT_NAME")
    assert _convert("qwen3_5-7b-sft_megatron.yaml").manifest["metadata"]["name"] == "qwen3-5-7b-sft-mtp"


@pytest.mark.parametrize(
    ("text", "expected"),
    [("list(range(0,32))", list(range(32))), ("list(range(16, 24))", list(range(16, 24))),
     ("[0, 1, 2, 3]", [0, 1, 2, 3]), ("[4]", [4]), ([5, 6], [5, 6]), ("list(range(8))", list(range(8)))],
)  # fmt: skip
def test_device_mapping(text: Any, expected: list[int]) -> None:
    assert ri.parse_device_mapping(text) == expected


def test_device_mapping_garbage_is_clear() -> None:
    with pytest.raises(ri.RollImportError, match="device_mapping"):
        ri.parse_device_mapping("range(0, 8)")


def test_missing_worker_and_unresolvable_reference() -> None:
    with pytest.raises(ri.RollImportError, match="actor_train"):
        ri.convert({"exp_name": "x", "pretrain": "Qwen/Qwen3.5-7B"})
    with pytest.raises(ri.RollImportError, match="neither a path nor a Hugging Face id"):
        ri.convert({"pretrain": "${model_root}", "sft_train": {"data_args": {"file_name": "a.jsonl"}}})
    notes: list[str] = []
    out = ri.resolve_interpolations({"a": "${nope.x}", "b": "${oc.env:SURELY_UNSET_VAR_123}"}, notes)
    assert out == {"a": "${nope.x}", "b": "${oc.env:SURELY_UNSET_VAR_123}"}
    assert len(notes) == 2 and "no such key" in notes[0] and "unset" in notes[1]


def test_mtp_layers_from_local_checkpoint(tmp_path: Path) -> None:
    ckpt = tmp_path / "Qwen3.5-7B"
    ckpt.mkdir()
    (ckpt / "config.json").write_text('{"mtp_num_hidden_layers": 1}')
    cfg = {"exp_name": "local", "pretrain": str(ckpt), "sft_train": {"mtp_training_mode": "joint",
           "data_args": {"file_name": "a.jsonl"}}}  # fmt: skip
    res = ri.convert(cfg)
    assert res.manifest["spec"]["model"]["mtpNumLayers"] == 1
    assert res.manifest["spec"]["model"]["source"] == {"path": str(ckpt)}


def test_cli_import_roll(tmp_path: Path, capsys: Any) -> None:
    out = tmp_path / "job.yaml"
    # Converted and written, and refused by this release's limits (exit 2), each named.
    assert cli_main(["import-roll", str(ROLL / "qwen3_5-27b-rlvr_megatron.yaml"), "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert "error: spec.trainer.volumes.checkpoints: rlvr pushes each new policy" in err
    assert cli_main(["validate", str(out)]) == 2
    assert "spec.trainer.volumes.checkpoints" in capsys.readouterr().out
    assert yaml.safe_load(out.read_text())["kind"] == "MTPTrainingJob"
    assert cli_main(["import-roll", str(tmp_path / "nope.yaml")]) == 2


def test_context_and_virtual_pipeline_keep_rolls_global_batch() -> None:
    """16 GPUs, TP 2 x PP 2 x CP 2: ROLL's data parallel is 2 and its global batch 1 x 8 x 2 = 16. This job
    runs without CP, so its data parallel is 16 / 4 = 4 and the same 16 sequences take 16 / (1 x 4) = 4
    accumulation steps (the earlier importer left CP out and made the global batch 32)."""
    res = _convert("handwritten_sft_cp2_vpp2.yaml")
    tr = res.manifest["spec"]["trainer"]
    assert res.manifest["spec"]["pipeline"] == "sft"
    assert (tr["replicas"], tr["gpusPerReplica"]) == (2, 8)
    assert tr["strategy"]["tensorParallelSize"] == 2 and tr["strategy"]["pipelineParallelSize"] == 2
    hp = tr["hyperparameters"]
    assert (hp["globalBatchSize"], hp["microBatchSize"], hp["gradientAccumulationSteps"]) == (16, 1, 4)
    notes = "\n".join(res.notes)
    assert "context_parallel_size=2: not supported" in notes
    assert "virtual_pipeline_model_parallel_size=2" in notes
    assert v.validate_object(res.manifest).errors == []


def test_expert_parallel_at_tp1_is_mapped_and_vllm_max_model_len_kept() -> None:
    res = _convert("handwritten_rlvr_ep4.yaml")
    spec = res.manifest["spec"]
    tr = spec["trainer"]
    assert tr["strategy"]["expertParallelSize"] == 4
    # The sharded optimizer cannot partition expert-parallel weights: turned off, and said.
    assert tr["strategy"]["distributedOptimizer"] is False
    assert any("use_distributed_optimizer=true with expert_model_parallel_size=4" in n for n in res.notes)
    # Data parallel 8 (EP does not divide it): 2 x 4 x 8 = 64 sequences a step, 4 accumulation steps.
    hp = tr["hyperparameters"]
    assert (hp["globalBatchSize"], hp["gradientAccumulationSteps"]) == (64, 4)
    assert spec["rollout"]["generation"]["maxModelLen"] == 4096  # vLLM's own, not 1024 + 2048
    assert (tr["data"]["promptKey"], tr["data"]["answerKey"]) == ("question", "ground_truth")


def test_a_rollout_wider_than_a_node_is_refused_with_the_fix() -> None:
    roll = yaml.safe_load((ROLL / "handwritten_rlvr_ep4.yaml").read_text())
    roll["actor_infer"]["strategy_args"]["strategy_config"]["tensor_parallel_size"] = 16
    with pytest.raises(ri.RollImportError, match=r"tensor_parallel_size 16 is wider than one node.*at most 8"):
        ri.convert(roll)


def test_rlvr_messages_field_becomes_the_prompt_key() -> None:
    """ROLL's data_args.messages names the field holding each prompt's messages."""
    assert _convert("qwen3_5-27b-rlvr_megatron.yaml").manifest["spec"]["trainer"]["data"]["promptKey"] == "prompt"
    roll = yaml.safe_load((ROLL / "qwen3_5-27b-rlvr_megatron.yaml").read_text())
    roll["actor_train"]["data_args"]["messages"] = "conversation"
    assert ri.convert(roll).manifest["spec"]["trainer"]["data"]["promptKey"] == "conversation"
