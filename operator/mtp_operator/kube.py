"""The few Kubernetes API calls the operator makes, over one small client of its own.

Only Kopf's public API is used (``tests/test_import_graph.py`` fails on any ``kopf._`` import): the
credentials come from the operator's login handler as a public ``kopf.ConnectionInfo`` (in-cluster
service account or kubeconfig, through Kopf's public login helpers; tests name their API server the
same way), and ``ConnectionInfo``'s public helpers give the TLS context and the Authorization header.
On a 401 (a rotated service-account token) the client logs in again once and retries the request.
Otherwise a failed call raises (``NotFound``, ``Conflict``, ``ApiError``): the level-based reconcile
retries on the next event or resync tick instead of sleeping inside a handler.
"""

from __future__ import annotations

import asyncio
import datetime
import inspect
import json
import logging
from collections.abc import Callable, Mapping
from typing import Any

import aiohttp
import kopf

from mtp_api import types as t


class ApiError(Exception):
    """An API call the server refused; ``status`` is the HTTP status (0: no connection was possible)."""

    def __init__(self, status: int, body: Any, url: str = "") -> None:
        message = body.get("message") if isinstance(body, dict) else body
        super().__init__(f"{status} {url}: {message}")
        self.status = status
        self.body = body


class NotFound(ApiError):
    pass


class Conflict(ApiError):
    pass


LoginFn = Callable[..., Any]  # (logger=..., **kwargs) -> kopf.ConnectionInfo | None, or an awaitable of it

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

# The most API requests the operator has in flight at once (Kopf's own watches aside).
MAX_REQUESTS_IN_FLIGHT = 32

MERGE = {"Content-Type": "application/merge-patch+json"}
APPLY = {"Content-Type": "application/apply-patch+yaml"}  # a JSON body is YAML too
MANAGER = "mtp-operator"


def collection(kind: str, namespace: str) -> str:
    return _PATHS[kind].format(ns=namespace)


class ApiClient:
    """One aiohttp session for every API call of the operator (Kopf's own watches aside), at most
    ``max_in_flight`` requests at once (a burst of new jobs would otherwise open a connection per write)."""

    def __init__(
        self,
        login: LoginFn,
        logger: logging.Logger | logging.LoggerAdapter[Any],
        max_in_flight: int = MAX_REQUESTS_IN_FLIGHT,
    ) -> None:
        self._login = login
        self.logger = logger
        self.slots = asyncio.Semaphore(max_in_flight)
        self._lock = asyncio.Lock()
        self._session: aiohttp.ClientSession | None = None
        self._server = ""

    async def _connect(self) -> tuple[aiohttp.ClientSession, str]:
        async with self._lock:
            if self._session is None:
                info = self._login(logger=self.logger)
                if inspect.isawaitable(info):
                    info = await info
                if not isinstance(info, kopf.ConnectionInfo):
                    raise ApiError(0, "no credentials: neither a service account nor a kubeconfig was found")
                self._session = aiohttp.ClientSession(
                    connector=aiohttp.TCPConnector(limit=0, ssl=info.as_ssl_context()),
                    headers={"User-Agent": MANAGER, **info.as_http_headers()},
                )
                self._server = info.server.rstrip("/")
            return self._session, self._server

    async def close(self) -> None:
        async with self._lock:
            if self._session is not None:
                await self._session.close()
                self._session = None

    async def request(
        self, method: str, path: str, payload: object | None = None, headers: dict[str, str] | None = None
    ) -> Any:
        async with self.slots:
            for attempt in (1, 2):
                session, server = await self._connect()
                url = f"{server}/{path.lstrip('/')}"
                data = None if payload is None else json.dumps(payload)
                hdrs = {"Content-Type": "application/json", **(headers or {})}
                async with session.request(method.upper(), url, data=data, headers=hdrs) as resp:
                    text = await resp.text()
                    status = resp.status
                if status == 401 and attempt == 1:
                    await self.close()  # log in again: a service-account token is rotated under us
                    continue
                try:
                    body = json.loads(text) if text else None
                except json.JSONDecodeError:
                    body = text
                if status == 404:
                    raise NotFound(status, body, url)
                if status == 409:
                    raise Conflict(status, body, url)
                if status >= 400:
                    raise ApiError(status, body, url)
                return body
        raise AssertionError("unreachable")  # pragma: no cover


class Kube:
    """Apply, create, merge-patch and delete by kind and name."""

    def __init__(self, client: ApiClient, logger: logging.Logger | logging.LoggerAdapter[Any]) -> None:
        self.client = client
        self.logger = logger

    async def _call(
        self, method: str, url: str, payload: object | None = None, headers: dict[str, str] | None = None
    ) -> Any:
        return await self.client.request(method, url, payload, headers)

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
