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

from mtp_api import contracts
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


RL_METRIC_NAMES = contracts.RL_METRIC_NAMES


class RLMetrics:
    """Rank-0 RL reporter on top of :class:`Metrics` (same file, same registry, same step gauge)."""

    def __init__(self, base: Metrics) -> None:
        self.base = base
        labels = ["job", "namespace"]
        r = base.registry
        self._g: dict[str, Gauge] = {}

        def gauge(name: str, doc: str, extra: tuple[str, ...] = ()) -> None:
            self._g[name] = Gauge(name, doc, [*labels, *extra], registry=r)

        gauge(contracts.RL_REWARD_MEAN, "Mean reward of the step's samples (or held-out prompts)", ("split",))
        gauge(contracts.RL_REWARD_STD, "Standard deviation of the step's rewards")
        gauge(contracts.RL_ACCURACY, "Share of samples whose answer verified correct", ("split",))
        gauge(contracts.RL_PARSE_FAILURES, "Samples of the last step whose answer could not be parsed")
        gauge(contracts.RL_RESPONSE_LENGTH, "Mean response length in tokens")
        gauge(contracts.RL_ENTROPY, "Mean per-token policy entropy on the responses")
        gauge(
            contracts.RL_KL,
            "k3 KL estimate to the generating policy (kind=old), the KL-penalty reference (kind=ref) or the starting policy (kind=initial)",
            ("kind",),
        )
        gauge(contracts.RL_CLIP_FRACTION, "Share of response tokens whose ratio was clipped")
        gauge(contracts.RL_PHASE_SECONDS, "Wall time of the last step's phases", ("phase",))
        gauge(contracts.RL_WEIGHT_VERSION, "Weight version the rollout serves")
        gauge(contracts.RL_ACCEPTANCE_RATE, "Rollout draft acceptance during the step's generation")
        gauge(contracts.RL_MEAN_ACCEPTANCE_LENGTH, "Rollout mean acceptance length during the step")
        gauge(contracts.RL_GENERATION_TOKENS_PER_SECOND, "Generated tokens per second of the generate phase")
        assert set(self._g) == set(RL_METRIC_NAMES)

    def _set(self, name: str, value: float | None, **labels: str) -> None:
        if value is not None:
            self._g[name].labels(**self.base._base, **labels).set(value)

    def record(self, rec: RLStepRecord) -> None:
        if not self.base.enabled:
            return
        self._set(contracts.RL_REWARD_MEAN, rec.reward_mean, split="train")
        self._set(contracts.RL_REWARD_STD, rec.reward_std)
        self._set(contracts.RL_ACCURACY, rec.accuracy, split="train")
        self._set(contracts.RL_PARSE_FAILURES, rec.parse_failures)
        self._set(contracts.RL_RESPONSE_LENGTH, rec.response_length_mean)
        self._set(contracts.RL_ENTROPY, rec.entropy)
        self._set(contracts.RL_KL, rec.kl_old, kind="old")
        self._set(contracts.RL_KL, rec.kl_ref, kind="ref")
        self._set(contracts.RL_KL, rec.kl_initial, kind="initial")
        self._set(contracts.RL_CLIP_FRACTION, rec.clip_fraction)
        for phase, seconds in rec.phase_seconds.items():
            self._set(contracts.RL_PHASE_SECONDS, seconds, phase=phase)
        self._set(contracts.RL_WEIGHT_VERSION, rec.weight_version)
        self._set(contracts.RL_ACCEPTANCE_RATE, rec.acceptance_rate)
        self._set(contracts.RL_MEAN_ACCEPTANCE_LENGTH, rec.mean_acceptance_length)
        self._set(contracts.RL_GENERATION_TOKENS_PER_SECOND, rec.generation_tokens_per_s)
        # The MTP head's loss and top-1 agreement on the policy's own samples (standalone/joint): the
        # operator's evidence for numSpeculativeTokens: auto while the rollout drafts nothing.
        if len(rec.mtp_loss) == len(rec.mtp_agreement):  # disabled mode: the head is not run, both empty
            self.base.set_mtp("train", rec.mtp_loss, rec.mtp_agreement)
        self.base.set_step(rec.step)
        self._write(rec.to_json())

    def record_validation(self, rec: RLValidationRecord) -> None:
        if not self.base.enabled:
            return
        self._set(contracts.RL_REWARD_MEAN, rec.reward_mean, split="validation")
        self._set(contracts.RL_ACCURACY, rec.accuracy, split="validation")
        self._write(rec.to_json())

    def event(self, **fields: Any) -> None:
        """A free-form line (phase changes, the export of version 0) that ``mtpjob run`` follows."""
        if self.base.enabled:
            self._write({"event": fields.pop("event"), **fields})

    def _write(self, obj: dict[str, Any]) -> None:
        with self.base.path.open("a") as fh:
            fh.write(json.dumps(obj) + "\n")
