"""The trainer StatefulSet: one torchrun agent per pod, rendezvous derived from the pod index.

A StatefulSet (not a Job) gives every pod a stable DNS name through the headless Service, so rank 0
is always ``<job>-trainer-0.<job>-trainer``, and gives the pod index as a label, which becomes
``NODE_RANK`` through the downward API. Its update strategy is ``OnDelete``: a template change never
rolls ranks one by one (which would break the world at every step); the operator restarts the whole
group by deleting every pod of an older ``mtp.io/restart-attempt`` (see ``reconcile.py``).
``$(VAR)`` references in the command are expanded by the kubelet from the container's env, so the
command stays the same for every pod.
"""

from __future__ import annotations

from typing import Any

from mtp_api import contracts
from mtp_api import types as t
from mtp_operator import names
from mtp_operator.builders import common
from mtp_operator.builders.model_path import output_dir, source_model_path, weight_sync_dir


def master_addr(job: t.MTPTrainingJob) -> str:
    host = f"{names.trainer(job)}-0.{names.trainer(job)}"
    return f"{host}.{job.metadata.namespace}.svc" if job.metadata.namespace else host


def rollout_service(job: t.MTPTrainingJob) -> str:
    """rlvr: ``host:port`` of the rollout's headless peers Service; rank 0 resolves the host to every
    ready replica (``MTP_ROLLOUT_SERVICE``, see ``mtp_api.contracts``)."""
    host = names.rollout_peers(job)
    if job.metadata.namespace:
        host = f"{host}.{job.metadata.namespace}.svc"
    rollout = job.spec.rollout or t.RolloutSpec()
    return f"{host}:{rollout.port}"


def trainer_env(job: t.MTPTrainingJob) -> list[dict[str, Any]]:
    tr = job.spec.trainer
    env: list[dict[str, Any]] = [
        {"name": "MASTER_ADDR", "value": master_addr(job)},
        {"name": "MASTER_PORT", "value": str(names.RENDEZVOUS_PORT)},
        {"name": "NNODES", "value": str(tr.replicas)},
        {
            "name": "NODE_RANK",
            "valueFrom": {"fieldRef": {"fieldPath": f"metadata.labels['{names.POD_INDEX_LABEL}']"}},
        },
        {"name": "NPROC_PER_NODE", "value": str(max(tr.gpus_per_replica, 1))},
        {"name": contracts.ENV_JOB_NAME, "value": job.metadata.name},
        {"name": contracts.ENV_METRICS_PORT, "value": str(tr.metrics_port)},
        {"name": contracts.ENV_TERMINATION_MESSAGE_PATH, "value": contracts.TERMINATION_MESSAGE_PATH},
    ]
    model = source_model_path(job)
    if model is not None:
        env.append({"name": contracts.ENV_MODEL_PATH, "value": model})
    if job.spec.pipeline == t.Pipeline.RLVR and job.spec.rollout is not None:
        env.append({"name": contracts.ENV_ROLLOUT_SERVICE, "value": rollout_service(job)})
        env.append({"name": contracts.ENV_WEIGHT_SYNC_DIR, "value": weight_sync_dir(job)})
    return env


def trainer_command(job: t.MTPTrainingJob) -> list[str]:
    """torchrun through ``mtp_trainer.launch``, which keeps the trainer's exit status 2 (bad input) for
    status to read. A finished trainer writes its completion into the termination message and exits 0;
    the operator reads that from the pod and scales the StatefulSet down (a restarted, finished trainer
    only repeats the message and exits)."""
    return [
        "python",
        "-m",
        "mtp_trainer.launch",
        "--nnodes=$(NNODES)",
        "--nproc-per-node=$(NPROC_PER_NODE)",
        "--node-rank=$(NODE_RANK)",
        "--master-addr=$(MASTER_ADDR)",
        "--master-port=$(MASTER_PORT)",
        "-m",
        "mtp_trainer.main",
        "--job",
        f"{names.CONFIG_MOUNT_DIR}/{names.CONFIG_FILE}",
        "--output-dir",
        output_dir(job),
    ]


def trainer_volumes(job: t.MTPTrainingJob) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    vols = job.spec.trainer.volumes
    pairs = [common.config_volume(job), common.shm_volume()]
    if vols.data is not None:
        pairs.append(common.pvc_volume("data", vols.data, read_only=True))
    if vols.checkpoints is not None:
        pairs.append(common.pvc_volume("checkpoints", vols.checkpoints))
    else:
        pairs.append(({"name": "output", "emptyDir": {}}, {"name": "output", "mountPath": names.DEFAULT_OUTPUT_DIR}))
    source = common.model_source_volume(job)
    if source is not None:
        pairs.append(source)
    return [v for v, _ in pairs], [m for _, m in pairs]


def build_trainer_statefulset(
    job: t.MTPTrainingJob, *, replicas: int, config_hash: str, attempt: int = 0
) -> dict[str, Any]:
    """``replicas`` is the spec's, or 0 when suspended or finished; ``attempt`` is the group restart count
    (``status.restarts``); the caller decides both."""
    tr = job.spec.trainer
    volumes, mounts = trainer_volumes(job)
    container: dict[str, Any] = {
        "name": "trainer",
        "image": tr.image,
        "imagePullPolicy": "IfNotPresent",
        "command": trainer_command(job),
        "env": trainer_env(job),
        "ports": [
            {"name": contracts.PORT_RENDEZVOUS, "containerPort": names.RENDEZVOUS_PORT, "protocol": "TCP"},
            {"name": contracts.PORT_TRAINER_METRICS, "containerPort": tr.metrics_port, "protocol": "TCP"},
        ],
        "readinessProbe": {
            "tcpSocket": {"port": contracts.PORT_TRAINER_METRICS},
            "periodSeconds": 10,
            "failureThreshold": 3,
        },
        "volumeMounts": mounts,
        "securityContext": common.container_security_context(),
        "terminationMessagePath": contracts.TERMINATION_MESSAGE_PATH,
        "terminationMessagePolicy": "File",
    }
    res = common.resources(tr.resources, tr.gpus_per_replica)
    if res:
        container["resources"] = res
    labels = names.labels(job, names.COMPONENT_TRAINER) | {names.LABEL_RESTART_ATTEMPT: str(attempt)}
    return {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": common.metadata(job, names.trainer(job), names.COMPONENT_TRAINER),
        "spec": {
            "serviceName": names.trainer(job),
            "replicas": replicas,
            "podManagementPolicy": "Parallel",
            "updateStrategy": {"type": "OnDelete"},
            "selector": {"matchLabels": names.selector(job, names.COMPONENT_TRAINER)},
            "template": common.customize_pod(
                {
                    "metadata": {
                        "labels": labels,
                        "annotations": names.job_annotations(job)
                        | {
                            names.ANNOTATION_CONFIG_HASH: config_hash,
                            "kubectl.kubernetes.io/default-container": "trainer",
                        },
                    },
                    "spec": {
                        "securityContext": common.pod_security_context(),
                        "terminationGracePeriodSeconds": job.spec.run_policy.termination_grace_period_seconds,
                        "containers": [container],
                        "volumes": volumes,
                    },
                },
                tr.pod,
            ),
        },
    }


def build_trainer_disruption_budget(job: t.MTPTrainingJob) -> dict[str, Any]:
    """A PodDisruptionBudget that refuses every voluntary eviction of a running rank (drain, Kueue's or the
    autoscaler's eviction): one evicted rank breaks the world and costs a group restart of every rank.

    ``maxUnavailable: 0`` holds for any replica count. ``unhealthyPodEvictionPolicy: AlwaysAllow`` lets a
    rank that is not Ready (still starting, or stuck) be evicted, so a broken job never blocks a drain.
    The operator's own group restarts delete pods (no eviction), so the budget never blocks them. It exists
    only while the trainer should run: suspended and finished jobs have no trainer pods to protect."""
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": common.metadata(job, names.trainer(job), names.COMPONENT_TRAINER),
        "spec": {
            "maxUnavailable": 0,
            "selector": {"matchLabels": names.selector(job, names.COMPONENT_TRAINER)},
            "unhealthyPodEvictionPolicy": "AlwaysAllow",
        },
    }
