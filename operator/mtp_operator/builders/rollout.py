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

For a real cluster: the Hugging Face cache (``HF_HOME``) is a volume, an emptyDir by default (a model
downloaded from the Hub survives a container restart) or ``spec.rollout.hfCache``'s claim (it survives
a new pod too), never the container's filesystem. The probes never kill a busy server: the startup probe
allows 30 minutes for loading the model, then liveness allows two minutes of unanswered ``/health``
(vLLM answers it from the API server's event loop, which a long prefill batch can hold up), while
readiness takes a replica out of the Service within seconds.
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
    pairs.append(hf_cache_volume(job))
    return [v for v, _ in pairs], [m for _, m in pairs]


def hf_cache_volume(job: t.MTPTrainingJob) -> tuple[dict[str, Any], dict[str, Any]]:
    """The Hugging Face cache: ``spec.rollout.hfCache``'s claim, else an emptyDir; at ``HF_HOME``."""
    cache = job.spec.rollout.hf_cache if job.spec.rollout is not None else None
    mount: dict[str, Any] = {"name": "hf-cache", "mountPath": names.HF_CACHE_MOUNT_DIR}
    if cache is None:
        return {"name": "hf-cache", "emptyDir": {}}, mount
    if cache.sub_path:
        mount["subPath"] = cache.sub_path
    return {"name": "hf-cache", "persistentVolumeClaim": {"claimName": cache.claim_name}}, mount


# Startup: up to 180 x 10 s = 30 min for the model to load. Liveness: 6 x 20 s = 2 min of /health unanswered
# (10 s each) before a restart, longer than any busy period of a healthy server. Readiness: out of the
# Service after 3 x 5 s.
STARTUP_PROBE = {"periodSeconds": 10, "timeoutSeconds": 5, "failureThreshold": 180}
LIVENESS_PROBE = {"periodSeconds": 20, "timeoutSeconds": 10, "failureThreshold": 6}
READINESS_PROBE = {"periodSeconds": 5, "timeoutSeconds": 5, "failureThreshold": 3}


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
        "env": [
            {"name": k, "value": v}
            for k, v in sorted({**plan.env, names.ENV_HF_HOME: names.HF_CACHE_MOUNT_DIR}.items())
        ],
        "ports": [{"name": probe_port, "containerPort": rollout.port, "protocol": "TCP"}],
        "startupProbe": {"httpGet": {"path": "/health", "port": probe_port}, **STARTUP_PROBE},
        "readinessProbe": {"httpGet": {"path": "/health", "port": probe_port}, **READINESS_PROBE},
        "livenessProbe": {"httpGet": {"path": "/health", "port": probe_port}, **LIVENESS_PROBE},
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
