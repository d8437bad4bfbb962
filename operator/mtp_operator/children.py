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
from mtp_operator.builders.services import build_rollout_service, build_trainer_service
from mtp_operator.builders.trainer import build_trainer_statefulset


@dataclass(frozen=True)
class Scale:
    """How many pods each workload should run; the reconciler derives it from suspend and the state."""

    trainer: bool = True
    rollout: bool = True


def stable_hash(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:16]


def _stamp(obj: dict[str, Any]) -> dict[str, Any]:
    obj["metadata"].setdefault("annotations", {})[names.ANNOTATION_SPEC_HASH] = stable_hash(obj)
    return obj


def desired_children(job: t.MTPTrainingJob, scale: Scale = Scale()) -> list[dict[str, Any]]:
    """ConfigMap, headless Service, StatefulSet and, with a rollout, its Deployment and Service.

    Order matters for a first apply: the ConfigMap and Services exist before the pods that use them.
    """
    cm = build_config_map(job)
    config_hash = stable_hash(cm["data"])
    out = [
        cm,
        build_trainer_service(job),
        build_trainer_statefulset(
            job, replicas=job.spec.trainer.replicas if scale.trainer else 0, config_hash=config_hash
        ),
    ]
    if job.spec.rollout is not None:
        out += [
            build_rollout_service(job),
            build_rollout_deployment(
                job, replicas=job.spec.rollout.replicas if scale.rollout else 0, config_hash=config_hash
            ),
        ]
    return [_stamp(o) for o in out]
