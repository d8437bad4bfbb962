"""The rollout Deployment: vLLM's OpenAI server, its command line from ``mtp_rollout.interface.server_plan``.

The launcher is the single place that knows vLLM's flags (``--speculative-config`` JSON, TP, CPU
mode), so a change of ``numSpeculativeTokens``, or of the schedule that ``auto`` chose (passed in from
``status.speculation``), changes the pod template's args and the Deployment rolls. When the model is the trainer's export, an init container waits for its ``config.json`` so
vLLM does not crash-loop while training runs.

For rlvr the server also opens vLLM's weight-sync API (``server_plan(weight_sync=True)``): trainer
rank 0 pushes each new policy into every replica, reached through the headless peers Service, and
names a directory under ``MTP_WEIGHT_SYNC_DIR`` on the checkpoints volume, which this pod mounts
at the trainer's path (read-only: the rollout only reads it). The pod needs no Kubernetes API, so
no service-account token is mounted.
"""

from __future__ import annotations

from typing import Any

from mtp_api import contracts
from mtp_api import types as t
from mtp_operator import names
from mtp_operator.builders import common
from mtp_operator.builders.model_path import rollout_model_path, serves_trainer_export
from mtp_rollout.interface import Schedule, server_plan

WAIT_SCRIPT = 'until [ -f "$1" ]; do echo "waiting for $1"; sleep 10; done'


def rollout_volumes(job: t.MTPTrainingJob) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    pairs = [common.shm_volume()]
    ckpt = job.spec.trainer.volumes.checkpoints
    if ckpt is not None:
        pairs.append(common.pvc_volume("checkpoints", ckpt, read_only=True))
    source = common.model_source_volume(job)
    if source is not None:
        pairs.append(source)
    return [v for v, _ in pairs], [m for _, m in pairs]


def build_rollout_deployment(
    job: t.MTPTrainingJob, *, replicas: int, config_hash: str, schedule: Schedule | None = None
) -> dict[str, Any]:
    """``schedule``: what ``numSpeculativeTokens: auto`` runs (``status.speculation``; None: the maximum k)."""
    rollout = job.spec.rollout or t.RolloutSpec()
    model_path = rollout_model_path(job)
    plan = server_plan(job, model_path, weight_sync=job.spec.pipeline == t.Pipeline.RLVR, schedule=schedule)
    volumes, mounts = rollout_volumes(job)
    probe_port = contracts.PORT_ROLLOUT
    container: dict[str, Any] = {
        "name": "vllm",
        "image": rollout.image,
        "imagePullPolicy": "IfNotPresent",
        "command": ["python"],
        "args": list(plan.args),
        "env": [{"name": k, "value": v} for k, v in sorted(plan.env.items())],
        "ports": [{"name": probe_port, "containerPort": rollout.port, "protocol": "TCP"}],
        "startupProbe": {
            "httpGet": {"path": "/health", "port": probe_port},
            "periodSeconds": 10,
            "failureThreshold": 180,
        },
        "readinessProbe": {"httpGet": {"path": "/health", "port": probe_port}, "periodSeconds": 5},
        "livenessProbe": {"httpGet": {"path": "/health", "port": probe_port}, "periodSeconds": 15},
        "volumeMounts": mounts,
        "securityContext": common.container_security_context(),
    }
    res = common.resources(rollout.resources, rollout.gpus_per_replica)
    if res:
        container["resources"] = res
    pod_spec: dict[str, Any] = {
        "automountServiceAccountToken": False,
        "securityContext": common.pod_security_context(),
        "containers": [container],
        "volumes": volumes,
    }
    if serves_trainer_export(job):
        pod_spec["initContainers"] = [
            {
                "name": "wait-for-model",
                "image": rollout.image,
                "imagePullPolicy": "IfNotPresent",
                "command": ["sh", "-c", WAIT_SCRIPT, "wait", f"{model_path}/config.json"],
                "volumeMounts": [m for m in mounts if m["name"] == "checkpoints"],
                "securityContext": common.container_security_context(),
            }
        ]
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": common.metadata(job, names.rollout(job), names.COMPONENT_ROLLOUT),
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": names.selector(job, names.COMPONENT_ROLLOUT)},
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 0, "maxUnavailable": 1}},
            "template": common.customize_pod(
                {
                    "metadata": {
                        "labels": names.labels(job, names.COMPONENT_ROLLOUT),
                        "annotations": names.job_annotations(job)
                        | {
                            names.ANNOTATION_CONFIG_HASH: config_hash,
                            "kubectl.kubernetes.io/default-container": "vllm",
                        },
                    },
                    "spec": pod_spec,
                },
                rollout.pod,
            ),
        },
    }
