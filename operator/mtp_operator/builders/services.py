"""The trainer's headless Service (stable pod DNS for the torchrun rendezvous) and the rollout Service."""

from __future__ import annotations

from typing import Any

from mtp_api import types as t
from mtp_operator import names
from mtp_operator.builders import common


def build_trainer_service(job: t.MTPTrainingJob) -> dict[str, Any]:
    """Headless, and publishing not-ready pods: rank 0 must be resolvable before anyone is Ready."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": common.metadata(job, names.trainer(job), names.COMPONENT_TRAINER),
        "spec": {
            "clusterIP": "None",
            "publishNotReadyAddresses": True,
            "selector": names.selector(job, names.COMPONENT_TRAINER),
            "ports": [
                {"name": "rdzv", "port": names.RENDEZVOUS_PORT, "targetPort": "rdzv", "protocol": "TCP"},
                {
                    "name": "metrics",
                    "port": job.spec.trainer.metrics_port,
                    "targetPort": "metrics",
                    "protocol": "TCP",
                },
            ],
        },
    }


def build_rollout_service(job: t.MTPTrainingJob) -> dict[str, Any]:
    rollout = job.spec.rollout or t.RolloutSpec()
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": common.metadata(job, names.rollout(job), names.COMPONENT_ROLLOUT),
        "spec": {
            "type": "ClusterIP",
            "selector": names.selector(job, names.COMPONENT_ROLLOUT),
            "ports": [{"name": "http", "port": rollout.port, "targetPort": "http-metrics", "protocol": "TCP"}],
        },
    }
