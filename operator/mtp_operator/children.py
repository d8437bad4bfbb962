"""The desired children of a job: the builders composed, each stamped with a hash of itself.

The ``mtp.io/spec-hash`` annotation is how the apply path decides, without a deep comparison against
server-defaulted objects, that a child is already what the spec asks for: equal hash, no write.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from mtp_api import types as t
from mtp_operator import names
from mtp_operator.builders.configmap import build_config_map
from mtp_operator.builders.rollout import build_rollout_deployment
from mtp_operator.builders.services import (
    build_rollout_peers_service,
    build_rollout_service,
    build_trainer_service,
)
from mtp_operator.builders.trainer import build_trainer_disruption_budget, build_trainer_statefulset
from mtp_rollout.interface import Schedule


@dataclass(frozen=True)
class Scale:
    """How many pods each workload should run; the reconciler derives it from suspend and the state."""

    trainer: bool = True
    rollout: bool = True
    attempt: int = 0  # the trainer group's restart attempt (status.restarts)


def stable_hash(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:16]


def _stamp(obj: dict[str, Any]) -> dict[str, Any]:
    obj["metadata"].setdefault("annotations", {})[names.ANNOTATION_SPEC_HASH] = stable_hash(obj)
    return obj


def trainer_config_hash(job: t.MTPTrainingJob) -> str:
    """What the trainer pods depend on: the whole spec, less the rollout for SFT, whose trainer never
    reads it. So a change of ``numSpeculativeTokens`` rolls the rollout but not a running SFT trainer,
    while ``suspend`` (which only scales) restarts nothing."""
    spec = job.spec.wire()
    spec.pop("runPolicy", None)
    if job.spec.pipeline == t.Pipeline.SFT:
        spec.pop("rollout", None)
    return stable_hash(spec)


def rollout_config_hash(job: t.MTPTrainingJob) -> str:
    """The rollout's inputs beyond its own args: the model it serves and the rollout spec."""
    assert job.spec.rollout is not None
    return stable_hash({"model": job.spec.model.wire(), "rollout": job.spec.rollout.wire()})


def desired_children(
    job: t.MTPTrainingJob, scale: Scale = Scale(), schedule: Schedule | None = None
) -> list[dict[str, Any]]:
    """ConfigMap, headless Service, StatefulSet, the trainer's PodDisruptionBudget while the trainer runs
    (not when suspended or finished: the reconcile prunes it) and, with a rollout, its Service and
    Deployment; for rlvr also the rollout's headless peers Service, through which trainer rank 0 reaches
    each replica.
    ``schedule`` is the k schedule ``numSpeculativeTokens: auto`` runs (from ``status.speculation``).

    Order matters for a first apply: the ConfigMap and Services exist before the pods that use them.
    """
    out = [
        build_config_map(job, schedule),
        build_trainer_service(job),
        build_trainer_statefulset(
            job,
            replicas=job.spec.trainer.replicas if scale.trainer else 0,
            config_hash=trainer_config_hash(job),
            attempt=scale.attempt,
        ),
    ]
    if scale.trainer:
        out.append(build_trainer_disruption_budget(job))
    if job.spec.rollout is not None:
        out.append(build_rollout_service(job))
        if job.spec.pipeline == t.Pipeline.RLVR:
            out.append(build_rollout_peers_service(job))
        out.append(
            build_rollout_deployment(
                job,
                replicas=job.spec.rollout.replicas if scale.rollout else 0,
                config_hash=rollout_config_hash(job),
                schedule=schedule,
            )
        )
    return [_stamp(o) for o in out]
