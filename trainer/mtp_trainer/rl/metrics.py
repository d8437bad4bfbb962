"""RL step metrics: one JSON line per RL step in ``metrics.jsonl`` and ``mtp_trainer_rl_*`` gauges.

The gauges sit in the trainer's own registry (``Metrics.registry``), so the same endpoint serves
SFT and RL series. Names are in ``RL_METRIC_NAMES``: the dashboard and the rules may only use
names listed there. Acceptance figures are the rollout's, read from vLLM's counter deltas over
the step's generation phase, so they belong to the exact samples the step trained on.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

from prometheus_client import Gauge

from mtp_trainer.metrics import Metrics

PHASES = ("generate", "reward", "train", "sync")


@dataclass
class RLStepRecord:
    """What one RL step did. ``acceptance_*`` are None when the rollout drafted nothing."""

    step: int
    weight_version: int
    reward_mean: float
    reward_std: float
    accuracy: float
    parse_failures: int
    samples: int
    response_length_mean: float
    policy_loss: float
    entropy: float
    clip_fraction: float
    kl_old: float
    kl_ref: float | None
    mtp_loss: list[float]
    mtp_agreement: list[float]
    grad_norm: list[float]
    learning_rate: float
    phase_seconds: dict[str, float]
    generated_tokens: int
    generation_tokens_per_s: float
    acceptance_rate: float | None = None
    mean_acceptance_length: float | None = None
    per_position_acceptance: list[float] = field(default_factory=list)
    zero_advantage_groups: int = 0
    kl_initial: float | None = None
    # The weight versions that generated the step's samples (0: the export the rollout started from).
    sample_weight_versions: list[int] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"phase": "rl", **asdict(self)}


@dataclass
class RLValidationRecord:
    step: int
    accuracy: float
    reward_mean: float
    parse_failures: int
    prompts: int

    def to_json(self) -> dict[str, Any]:
        return {"phase": "rl", "split": "validation", **asdict(self)}


RL_METRIC_NAMES = (
    "mtp_trainer_rl_reward_mean",
    "mtp_trainer_rl_reward_std",
    "mtp_trainer_rl_accuracy",
    "mtp_trainer_rl_parse_failures",
    "mtp_trainer_rl_response_length",
    "mtp_trainer_rl_entropy",
    "mtp_trainer_rl_kl",
    "mtp_trainer_rl_clip_fraction",
    "mtp_trainer_rl_phase_seconds",
    "mtp_trainer_rl_weight_version",
    "mtp_trainer_rl_acceptance_rate",
    "mtp_trainer_rl_mean_acceptance_length",
    "mtp_trainer_rl_generation_tokens_per_second",
)


class RLMetrics:
    """Rank-0 RL reporter on top of :class:`Metrics` (same file, same registry, same step gauge)."""

    def __init__(self, base: Metrics) -> None:
        self.base = base
        labels = ["job", "namespace"]
        r = base.registry
        self._g: dict[str, Gauge] = {}

        def gauge(name: str, doc: str, extra: tuple[str, ...] = ()) -> None:
            self._g[name] = Gauge(name, doc, [*labels, *extra], registry=r)

        gauge("mtp_trainer_rl_reward_mean", "Mean reward of the step's samples (or held-out prompts)", ("split",))
        gauge("mtp_trainer_rl_reward_std", "Standard deviation of the step's rewards")
        gauge("mtp_trainer_rl_accuracy", "Share of samples whose answer verified correct", ("split",))
        gauge("mtp_trainer_rl_parse_failures", "Samples of the last step whose answer could not be parsed")
        gauge("mtp_trainer_rl_response_length", "Mean response length in tokens")
        gauge("mtp_trainer_rl_entropy", "Mean per-token policy entropy on the responses")
        gauge(
            "mtp_trainer_rl_kl",
            "k3 KL estimate to the generating policy (kind=old), the KL-penalty reference (kind=ref) or the starting policy (kind=initial)",
            ("kind",),
        )
        gauge("mtp_trainer_rl_clip_fraction", "Share of response tokens whose ratio was clipped")
        gauge("mtp_trainer_rl_phase_seconds", "Wall time of the last step's phases", ("phase",))
        gauge("mtp_trainer_rl_weight_version", "Weight version the rollout serves")
        gauge("mtp_trainer_rl_acceptance_rate", "Rollout draft acceptance during the step's generation")
        gauge("mtp_trainer_rl_mean_acceptance_length", "Rollout mean acceptance length during the step")
        gauge("mtp_trainer_rl_generation_tokens_per_second", "Generated tokens per second of the generate phase")
        assert set(self._g) == set(RL_METRIC_NAMES)

    def _set(self, name: str, value: float | None, **labels: str) -> None:
        if value is not None:
            self._g[name].labels(**self.base._base, **labels).set(value)

    def record(self, rec: RLStepRecord) -> None:
        if not self.base.enabled:
            return
        self._set("mtp_trainer_rl_reward_mean", rec.reward_mean, split="train")
        self._set("mtp_trainer_rl_reward_std", rec.reward_std)
        self._set("mtp_trainer_rl_accuracy", rec.accuracy, split="train")
        self._set("mtp_trainer_rl_parse_failures", rec.parse_failures)
        self._set("mtp_trainer_rl_response_length", rec.response_length_mean)
        self._set("mtp_trainer_rl_entropy", rec.entropy)
        self._set("mtp_trainer_rl_kl", rec.kl_old, kind="old")
        self._set("mtp_trainer_rl_kl", rec.kl_ref, kind="ref")
        self._set("mtp_trainer_rl_kl", rec.kl_initial, kind="initial")
        self._set("mtp_trainer_rl_clip_fraction", rec.clip_fraction)
        for phase, seconds in rec.phase_seconds.items():
            self._set("mtp_trainer_rl_phase_seconds", seconds, phase=phase)
        self._set("mtp_trainer_rl_weight_version", rec.weight_version)
        self._set("mtp_trainer_rl_acceptance_rate", rec.acceptance_rate)
        self._set("mtp_trainer_rl_mean_acceptance_length", rec.mean_acceptance_length)
        self._set("mtp_trainer_rl_generation_tokens_per_second", rec.generation_tokens_per_s)
        self.base.set_step(rec.step)
        self._write(rec.to_json())

    def record_validation(self, rec: RLValidationRecord) -> None:
        if not self.base.enabled:
            return
        self._set("mtp_trainer_rl_reward_mean", rec.reward_mean, split="validation")
        self._set("mtp_trainer_rl_accuracy", rec.accuracy, split="validation")
        self._write(rec.to_json())

    def event(self, **fields: Any) -> None:
        """A free-form line (phase changes, the export of version 0) that ``mtpjob run`` follows."""
        if self.base.enabled:
            self._write({"event": fields.pop("event"), **fields})

    def _write(self, obj: dict[str, Any]) -> None:
        with self.base.path.open("a") as fh:
            fh.write(json.dumps(obj) + "\n")
