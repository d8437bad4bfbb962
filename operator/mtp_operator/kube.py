"""The few Kubernetes API calls the operator makes, over Kopf's own authenticated client.

This is the only module that imports Kopf's private API (``kopf._cogs``; ``tests/test_import_graph.py``
fails on one anywhere else). Kopf has no public API client: it keeps the credentials its login handler
returned in a vault, re-authenticates on 401 (service-account tokens are rotated) and shares one
connection pool between its watches and ``api.request``. Our own aiohttp client would have to redo all
of that; reusing it (Kopf is pinned exactly in pyproject.toml, so the private API cannot move under us)
means one login, one pool and the same credentials Kopf's watches use, in-cluster or from a kubeconfig.
Retries are turned off (``backoffs=()``): a failed call raises, and the level-based reconcile
retries on the next event or resync tick instead of sleeping inside a handler.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
from collections.abc import Mapping
from typing import Any

import kopf
from kopf._cogs.clients import api, errors

from mtp_api import types as t

NotFound = errors.APINotFoundError
Conflict = errors.APIConflictError
ApiError = errors.APIError

_PATHS = {
    "ConfigMap": "api/v1/namespaces/{ns}/configmaps",
    "Service": "api/v1/namespaces/{ns}/services",
    "StatefulSet": "apis/apps/v1/namespaces/{ns}/statefulsets",
    "Deployment": "apis/apps/v1/namespaces/{ns}/deployments",
    "PodDisruptionBudget": "apis/policy/v1/namespaces/{ns}/poddisruptionbudgets",
    "Pod": "api/v1/namespaces/{ns}/pods",
    "Event": "api/v1/namespaces/{ns}/events",
    t.KIND: f"apis/{t.API_VERSION}/namespaces/{{ns}}/{t.PLURAL}",
}

# The most API requests the operator has in flight at once (Kopf's own watches aside). Kopf's client pool
# has no limit, so a burst of new jobs would otherwise open one connection per concurrent write.
MAX_REQUESTS_IN_FLIGHT = 32

MERGE = {"Content-Type": "application/merge-patch+json"}
APPLY = {"Content-Type": "application/apply-patch+yaml"}  # a JSON body is YAML too
MANAGER = "mtp-operator"


def collection(kind: str, namespace: str) -> str:
    return _PATHS[kind].format(ns=namespace)


class Kube:
    """Apply, create, merge-patch and delete by kind and name."""

    def __init__(
        self,
        settings: kopf.OperatorSettings,
        logger: logging.Logger | logging.LoggerAdapter[Any],
        slots: asyncio.Semaphore | None = None,
    ):
        """``slots``: shared by every Kube of the operator, it caps the requests in flight."""
        self.settings = settings
        self.logger = logger
        self.slots = slots or asyncio.Semaphore(MAX_REQUESTS_IN_FLIGHT)

    async def _call(
        self, method: str, url: str, payload: object | None = None, headers: dict[str, str] | None = None
    ) -> Any:
        async with self.slots:
            response = await api.request(
                method, url, payload=payload, headers=headers, settings=self.settings, logger=self.logger, backoffs=()
            )
            async with response:
                return await response.json()

    async def get(self, path: str) -> Any:
        return await self._call("get", path)

    async def create(self, namespace: str, obj: dict[str, Any]) -> Any:
        return await self._call("post", collection(obj["kind"], namespace), obj)

    async def apply(self, namespace: str, obj: dict[str, Any]) -> Any:
        """Server-side apply as ``mtp-operator``, forced: creates the object if it is missing, takes back
        fields others changed, and removes fields the operator applied before and no longer sends."""
        url = f"{collection(obj['kind'], namespace)}/{obj['metadata']['name']}?fieldManager={MANAGER}&force=true"
        return await self._call("patch", url, obj, APPLY)

    async def merge_patch(
        self, namespace: str, kind: str, name: str, patch: dict[str, Any], subresource: str | None = None
    ) -> Any:
        url = f"{collection(kind, namespace)}/{name}" + (f"/{subresource}" if subresource else "")
        return await self._call("patch", url, patch, MERGE)

    async def event(self, job: Mapping[str, Any], type_: str, reason: str, message: str) -> Any:
        """A core/v1 Event about the job (``kubectl describe`` and ``kubectl get events`` show it)."""
        meta = job.get("metadata") or {}
        namespace = meta.get("namespace", "")
        now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        body = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"generateName": f"{meta.get('name', '')}.", "namespace": namespace},
            "involvedObject": {
                "apiVersion": t.API_VERSION,
                "kind": t.KIND,
                "name": meta.get("name", ""),
                "namespace": namespace,
                "uid": meta.get("uid", ""),
            },
            "type": type_,
            "reason": reason,
            "message": message[:1024],
            "source": {"component": MANAGER},
            "reportingComponent": MANAGER,
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
        }
        return await self._call("post", collection("Event", namespace), body)

    async def delete(self, namespace: str, kind: str, name: str, *, force: bool = False) -> Any:
        """Delete with background propagation; ``force`` sets grace 0 (a pod on a lost node: its kubelet
        can never confirm the deletion, so nothing else ever frees the pod's name)."""
        body: dict[str, Any] = {"propagationPolicy": "Background"}
        if force:
            body["gracePeriodSeconds"] = 0
        try:
            return await self._call("delete", f"{collection(kind, namespace)}/{name}", body)
        except NotFound:
            return None  # already gone: what a delete wanted
