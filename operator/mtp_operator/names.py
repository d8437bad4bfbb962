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


def labels(job: t.MTPTrainingJob, component: str) -> dict[str, str]:
    return {
        LABEL_NAME: "mtptrainingjob",
        LABEL_INSTANCE: job.metadata.name,
        LABEL_COMPONENT: component,
        LABEL_MANAGED_BY: MANAGED_BY,
        LABEL_PART_OF: "mtp",
        LABEL_JOB: job.metadata.name,
    }
