"""Names and labels of everything the operator creates for one MTPTrainingJob.

Kept in one place so that builders, the observed-state indexes, the chart's PodMonitors and the
dashboards agree on them; a rename here is a rename everywhere.
"""

from __future__ import annotations

from mtp_api import contracts
from mtp_api import types as t

MANAGED_BY = "mtp-operator"
FIELD_MANAGER = "mtp-operator"

# Shared with the chart, the trainer and the rollout: defined in mtp_api.contracts and named here too,
# so the operator reads ``names.X`` for everything it stamps on an object.
LABEL_NAME = contracts.LABEL_NAME
LABEL_INSTANCE = contracts.LABEL_INSTANCE
LABEL_COMPONENT = contracts.LABEL_COMPONENT
LABEL_MANAGED_BY = contracts.LABEL_MANAGED_BY
LABEL_PART_OF = contracts.LABEL_PART_OF
LABEL_JOB = contracts.LABEL_JOB
POD_INDEX_LABEL = "apps.kubernetes.io/pod-index"
# The trainer group's restart attempt (= status.restarts when the pod was made): a group restart bumps
# it in the StatefulSet's template (updateStrategy OnDelete) and deletes every pod of an older attempt.
LABEL_RESTART_ATTEMPT = "mtp.io/restart-attempt"
# Job metadata that is not copied to children: kubectl's bookkeeping.
NOT_PROPAGATED_PREFIXES = ("kubectl.kubernetes.io/", "kopf.zalando.org/")

ANNOTATION_SPEC_HASH = "mtp.io/spec-hash"
ANNOTATION_CONFIG_HASH = "mtp.io/config-hash"

COMPONENT_TRAINER = contracts.COMPONENT_TRAINER
COMPONENT_ROLLOUT = contracts.COMPONENT_ROLLOUT
COMPONENT_CONFIG = "config"

CONFIG_MOUNT_DIR = contracts.CONFIG_MOUNT_DIR
CONFIG_FILE = contracts.JOB_FILE
# In the ConfigMap, for people and tools: the rollout's command line and env (nothing mounts it).
ROLLOUT_PLAN_FILE = "rollout.json"
DEFAULT_OUTPUT_DIR = contracts.DEFAULT_OUTPUT_DIR
MODEL_MOUNT_DIR = contracts.MODEL_MOUNT_DIR
RENDEZVOUS_PORT = contracts.RENDEZVOUS_PORT
# The rollout's Hugging Face cache (``HF_HOME``): an emptyDir or spec.rollout.hfCache's claim, mounted here.
ENV_HF_HOME = "HF_HOME"
HF_CACHE_MOUNT_DIR = "/var/cache/huggingface"
# The rollout Service's port name (the container port it targets is contracts.PORT_ROLLOUT).
SERVICE_PORT_ROLLOUT = "http"


def config_map(job: t.MTPTrainingJob) -> str:
    return f"{job.metadata.name}-config"


def trainer(job: t.MTPTrainingJob) -> str:
    """The StatefulSet and its headless Service share this name (pods are ``<name>-<index>``)."""
    return f"{job.metadata.name}-trainer"


def rollout(job: t.MTPTrainingJob) -> str:
    """The rollout Deployment and its Service share this name."""
    return f"{job.metadata.name}-rollout"


def rollout_peers(job: t.MTPTrainingJob) -> str:
    """rlvr: the rollout's headless Service, whose DNS A records are the ready replicas that trainer
    rank 0 generates with and syncs weights into, one by one (the ClusterIP Service would balance)."""
    return f"{job.metadata.name}-rollout-peers"


def selector(job: t.MTPTrainingJob, component: str) -> dict[str, str]:
    """The immutable pod selector of a workload: only labels that never change for a job."""
    return {LABEL_JOB: job.metadata.name, LABEL_COMPONENT: component}


def _propagated(values: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in values.items() if not k.startswith(NOT_PROPAGATED_PREFIXES)}


def job_annotations(job: t.MTPTrainingJob) -> dict[str, str]:
    """The job's own annotations, copied to every child and pod (coscheduling, Kueue, cost tags)."""
    return _propagated(job.metadata.annotations)


def labels(job: t.MTPTrainingJob, component: str) -> dict[str, str]:
    """The job's own labels (e.g. Kueue's ``kueue.x-k8s.io/queue-name``), then the operator's, which win."""
    return _propagated(job.metadata.labels) | {
        LABEL_NAME: "mtptrainingjob",
        LABEL_INSTANCE: job.metadata.name,
        LABEL_COMPONENT: component,
        LABEL_MANAGED_BY: MANAGED_BY,
        LABEL_PART_OF: "mtp",
        LABEL_JOB: job.metadata.name,
    }
