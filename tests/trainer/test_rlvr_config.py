"""rlvr jobs: the typed spec maps onto the trainer's RL config, the checks that run before any pod
refuse what this release cannot run (field named), and the trainer finds its rollout replicas."""

from __future__ import annotations

import copy
import socket
from pathlib import Path
from typing import Any

import pytest
import yaml

from mtp_api import contracts
from mtp_api import types as t
from mtp_api.validation import load_job, validate_object
from mtp_trainer.config import ConfigError, from_job
from mtp_trainer.rlvr import acceptance, prompt_ids, rollout_urls

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
FIXTURES = Path(__file__).resolve().parents[1] / "rollout" / "fixtures"


def _tiny_rlvr() -> dict[str, Any]:
    return yaml.safe_load((EXAMPLES / "tiny-rlvr.yaml").read_text())


def test_the_tiny_rlvr_example_maps_onto_the_rl_config() -> None:
    cfg = from_job(load_job(EXAMPLES / "tiny-rlvr.yaml"), base_dir=EXAMPLES)
    rl = cfg.rl
    assert rl is not None
    # Values as written in examples/tiny-rlvr.yaml.
    assert (rl.prompts_per_step, rl.samples_per_prompt, rl.clip_low, rl.clip_high) == (8, 8, 0.2, 0.28)
    assert (rl.max_tokens, rl.temperature, rl.served_model_name) == (64, 1.0, "tiny-rlvr")
    assert rl.reward.answer_format == "boxed"
    assert cfg.mtp.mode == "standalone" and cfg.optim.max_steps == 10
    assert rl.warmup is not None
    assert (rl.warmup.steps, rl.warmup.mode, rl.warmup.learning_rate) == (500, "joint", 3e-3)
    # builtinTask {difficulty: 2, trainSize: 30000, validationSize: 256, seed: 7} spelled out for the data layer.
    assert cfg.data.train_files == ("builtin:arithmetic?n=30000&validation_n=256&difficulty=2&seed=7",)


def test_sft_jobs_have_no_rl_config() -> None:
    assert from_job(load_job(EXAMPLES / "tiny-sft.yaml"), base_dir=EXAMPLES).rl is None


def _errors(obj: dict[str, Any]) -> list[str]:
    return [str(f) for f in validate_object(obj).errors]


def _warnings(obj: dict[str, Any]) -> list[str]:
    return [str(f) for f in validate_object(obj).warnings]


def test_the_tiny_rlvr_example_is_valid() -> None:
    assert _errors(_tiny_rlvr()) == []


@pytest.mark.parametrize(
    ("edit", "field"),
    [
        # 4 stages cannot split the example's 6 layers evenly.
        (lambda s: s["trainer"].update(strategy={"pipelineParallelSize": 4}, replicas=4), "spec.trainer.strategy"),
        (
            lambda s: (s["trainer"]["volumes"].pop("checkpoints"), s["model"].update(source={"path": "/models/x"})),
            "spec.trainer.volumes.checkpoints",
        ),
        (lambda s: s["trainer"]["data"].update(trainFiles=["/data/prompts.csv"]), "spec.trainer.data.trainFiles[0]"),
        (lambda s: s["trainer"]["data"].update(trainFiles=["builtin:pydoc-topics"]), "spec.trainer.data.trainFiles[0]"),
        (lambda s: s["trainer"]["grpo"].update(miniBatches=3), "spec.trainer.grpo.miniBatches"),
        (lambda s: s["rollout"]["generation"].update(maxTokens=128), "spec.rollout.generation.maxTokens"),
        (lambda s: s["rollout"].update(replicas=0), "spec.rollout.replicas"),
    ],
    ids=["pp4-of-6-layers", "no-checkpoints", "csv", "pydoc", "mini-batches", "max-tokens", "no-replicas"],
)
def test_what_rlvr_cannot_run_is_refused_with_the_field_named(edit: Any, field: str) -> None:
    obj = _tiny_rlvr()
    edit(obj["spec"])
    errors = _errors(obj)
    assert errors, "expected a refusal"
    assert any(e.startswith(field) for e in errors), errors


def test_greedy_rlvr_is_warned_about() -> None:
    obj = _tiny_rlvr()
    obj["spec"]["rollout"]["generation"]["temperature"] = 0.0
    assert [w for w in _warnings(obj) if w.startswith("spec.rollout.generation.temperature")]


def test_rlvr_with_tensor_parallel_is_accepted_and_planned() -> None:
    """rlvr trains under tensor parallel (tests/rl/test_policy_step_tensor_parallel.py): validation and
    the trainer's config accept it, with the data-parallel size the GRPO batch splits over."""
    obj = _tiny_rlvr()
    obj["spec"]["trainer"].update(strategy={"tensorParallelSize": 2, "sequenceParallel": True}, replicas=2)
    assert _errors(obj) == []
    cfg = from_job(t.MTPTrainingJob.model_validate(obj), base_dir=EXAMPLES, world_size=2)
    assert (cfg.parallel.tensor_parallel_size, cfg.parallel.sequence_parallel) == (2, True)
    assert cfg.rl is not None


def test_rlvr_with_pipeline_parallel_is_accepted_and_planned() -> None:
    """rlvr trains under pipeline parallel (tests/rl/test_policy_step_tensor_parallel.py, pp): 2 stages
    of the example's 6 layers and 2 data-parallel ranks over 4 GPUs."""
    obj = _tiny_rlvr()
    obj["spec"]["trainer"].update(strategy={"pipelineParallelSize": 2}, replicas=2, gpusPerReplica=2)
    assert _errors(obj) == []
    cfg = from_job(t.MTPTrainingJob.model_validate(obj), base_dir=EXAMPLES, world_size=4)
    assert cfg.parallel.pipeline_parallel_size == 2
    assert cfg.rl is not None


def test_the_explicit_rollout_list_wins_over_the_service() -> None:
    env = {contracts.ENV_ROLLOUT_URLS: "http://a:1, http://b:2", contracts.ENV_ROLLOUT_SERVICE: "svc:8000"}
    assert rollout_urls(env) == ["http://a:1", "http://b:2"]


def test_a_service_resolves_to_every_address() -> None:
    # localhost resolves on every machine; the address set is whatever the resolver says, read independently.
    expected = sorted({i[4][0] for i in socket.getaddrinfo("localhost", 8000, type=socket.SOCK_STREAM)})
    urls = rollout_urls({contracts.ENV_ROLLOUT_SERVICE: "localhost:8000"})
    assert urls == [f"http://[{a}]:8000" if ":" in a else f"http://{a}:8000" for a in expected]


def test_no_rollout_address_is_a_clear_error() -> None:
    with pytest.raises(ConfigError, match=contracts.ENV_ROLLOUT_URLS):
        rollout_urls({})


def test_step_acceptance_sums_counter_deltas_over_replicas() -> None:
    before = [(FIXTURES / "vllm_k3_zero_a.txt").read_text(), (FIXTURES / "vllm_k2_random_a.txt").read_text()]
    after = [(FIXTURES / "vllm_k3_zero_b.txt").read_text(), (FIXTURES / "vllm_k2_random_b.txt").read_text()]
    fig, generated = acceptance(before, after, "tiny")
    # Replica 1 (k=3, always accepted): drafts 20 -> 50, draft tokens 60 -> 150, accepted 60 -> 150,
    # per position 20 -> 50 each, generation tokens 80 -> 200. Replica 2 (k=2, random head): drafts
    # 235 -> 373, draft tokens 470 -> 746, accepted 0 -> 3 (all at position 0).
    assert fig.acceptance_rate == pytest.approx((90 + 3) / (90 + 276))
    assert fig.mean_acceptance_length == pytest.approx(1 + 93 / (30 + 138))
    assert fig.per_position == pytest.approx({0: (30 + 3) / 168, 1: (30 + 0) / 168, 2: 30 / 168})
    assert generated == (200 - 80) + (384 - 240)


def test_prompts_render_like_the_sft_data() -> None:
    from mtp_trainer import data, tokenizer
    from mtp_trainer.rl.tasks import Problem, as_conversation

    p = Problem(prompt="Compute 2 + 3.", answer="5", solution="First, 2 + 3 = 5. The answer is \\boxed{5}.")
    tok = tokenizer.train_bpe(data.corpus_text([as_conversation(p)] * 4), 300)
    full, learn = data.encode(as_conversation(p), tok)
    ids = prompt_ids(p, tok)
    # The prompt is exactly the SFT rendering up to the first learned token (the assistant's content).
    assert ids == full[: learn.index(1)]


def test_copies_do_not_leak_between_cases() -> None:
    a, b = _tiny_rlvr(), copy.deepcopy(_tiny_rlvr())
    assert a == b


def test_a_rollout_without_speculation_has_no_drafter_to_sync() -> None:
    obj = _tiny_rlvr()
    assert from_job(t.MTPTrainingJob.model_validate(obj), base_dir=EXAMPLES).rl.rollout_drafts is True  # type: ignore[union-attr]
    obj["spec"]["rollout"]["speculative"] = {"method": "none"}
    cfg = from_job(t.MTPTrainingJob.model_validate(obj), base_dir=EXAMPLES)
    assert cfg.rl is not None and cfg.rl.rollout_drafts is False
