"""The trainer's headless Service (stable pod DNS for the torchrun rendezvous), the rollout Service
and, for rlvr, the rollout's headless peers Service (one DNS A record per ready replica)."""

from __future__ import annotations

from typing import Any

from mtp_api import contracts
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
                {
                    "name": contracts.PORT_RENDEZVOUS,
                    "port": names.RENDEZVOUS_PORT,
                    "targetPort": contracts.PORT_RENDEZVOUS,
                    "protocol": "TCP",
                },
                {
                    "name": contracts.PORT_TRAINER_METRICS,
                    "port": job.spec.trainer.metrics_port,
                    "targetPort": contracts.PORT_TRAINER_METRICS,
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
            "ports": [
                {
                    "name": names.SERVICE_PORT_ROLLOUT,
                    "port": rollout.port,
                    "targetPort": contracts.PORT_ROLLOUT,
                    "protocol": "TCP",
                }
            ],
        },
    }


def build_rollout_peers_service(job: t.MTPTrainingJob) -> dict[str, Any]:
    """rlvr: trainer rank 0 resolves this name to every ready rollout pod and talks to each directly,
    for generation and for weight sync; a ClusterIP would send each request to one replica at random.

    Ready pods only: a replica that is still loading or is restarting drops out of DNS, so rank 0
    neither generates with it nor pushes weights into it.
    """
    rollout = job.spec.rollout or t.RolloutSpec()
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": common.metadata(job, names.rollout_peers(job), names.COMPONENT_ROLLOUT),
        "spec": {
            "clusterIP": "None",
            "publishNotReadyAddresses": False,
            "selector": names.selector(job, names.COMPONENT_ROLLOUT),
            "ports": [
                {
                    "name": names.SERVICE_PORT_ROLLOUT,
                    "port": rollout.port,
                    "targetPort": contracts.PORT_ROLLOUT,
                    "protocol": "TCP",
                }
            ],
        },
    }
