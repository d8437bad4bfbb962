"""Fixtures for the operator tests: a valid job to mutate, and backends to run the operator against.

``backend`` is the kmock-based test API server by default; with the ``cluster`` marker and a
``KUBECONFIG`` that points at a real cluster, the same scenarios run there (CRD must be installed).
"""

from __future__ import annotations

import copy
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.operator.backends import Backend, ClusterBackend, KmockBackend

REPO = Path(__file__).resolve().parents[2]


def job_manifest(name: str = "demo", namespace: str = "team-a") -> dict[str, Any]:
    """The tiny SFT example with a checkpoints volume (the rollout serves the trainer's export)."""
    body = copy.deepcopy(yaml.safe_load((REPO / "examples" / "tiny-sft.yaml").read_text()))
    body["metadata"] = {"name": name, "namespace": namespace}
    body["spec"]["trainer"]["volumes"] = {"checkpoints": {"claimName": "ckpt", "mountPath": "/ckpt"}}
    return body


@pytest.fixture
def job() -> dict[str, Any]:
    return job_manifest()


@pytest.fixture(
    params=[
        "kmock",
        pytest.param("cluster", marks=pytest.mark.cluster),
    ]
)
def backend(request: pytest.FixtureRequest) -> Iterator[Backend]:
    if request.param == "cluster":
        if not os.environ.get("KUBECONFIG"):
            pytest.skip("KUBECONFIG does not point at a cluster")
        with ClusterBackend(namespace=f"mtp-test-{uuid.uuid4().hex[:6]}") as cluster:
            yield cluster
    else:
        with KmockBackend() as kmock_backend:
            yield kmock_backend
