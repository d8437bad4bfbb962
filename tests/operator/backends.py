"""One interface over the test API server and a real cluster, so the operator scenarios run on both.

The operator always runs in-process (``OperatorThread``), so tests can reach its metrics store;
only where it connects differs.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from typing import Any, Protocol

from mtp_api import types as t
from mtp_operator.settings import OperatorConfig
from tests.apiserver.harness import OperatorThread, ServerThread

PLURAL_KIND = {
    "configmaps": "ConfigMap",
    "services": "Service",
    "statefulsets": "StatefulSet",
    "deployments": "Deployment",
    "pods": "Pod",
    t.PLURAL: t.KIND,
}


class Backend(Protocol):
    namespace: str
    real: bool

    def operator(self) -> OperatorThread: ...
    def apply(self, plural: str, body: dict[str, Any]) -> None: ...
    def get(self, plural: str, name: str) -> dict[str, Any] | None: ...
    def list(self, plural: str) -> list[dict[str, Any]]: ...
    def patch(self, plural: str, name: str, patch: dict[str, Any], subresource: str | None = None) -> None: ...
    def delete(self, plural: str, name: str) -> None: ...
    def writes(self) -> int | None: ...


class KmockBackend:
    real = False

    def __init__(self, namespace: str = "team-a") -> None:
        self.namespace = namespace
        self.server = ServerThread()

    def __enter__(self) -> KmockBackend:
        self.server.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.__exit__(*exc)

    def operator(self, config: OperatorConfig | None = None) -> OperatorThread:
        return OperatorThread(self.server.url, config)

    def apply(self, plural: str, body: dict[str, Any]) -> None:
        body = {**body, "metadata": {**body["metadata"], "namespace": self.namespace}}
        self.server.call(lambda: self.server.server.put_object(plural, body))

    def get(self, plural: str, name: str) -> dict[str, Any] | None:
        return self.server.call(lambda: self.server.server.get_object(plural, self.namespace, name))

    def list(self, plural: str) -> list[dict[str, Any]]:
        return self.server.call(lambda: self.server.server.find(plural, self.namespace))

    def patch(self, plural: str, name: str, patch: dict[str, Any], subresource: str | None = None) -> None:
        srv = self.server.server

        def do() -> None:
            from tests.apiserver.apiserver import merge_patch

            key = next(k for k in srv.objects if k[2] == plural and k[3] == self.namespace and k[4] == name)
            res = next(r for r in srv.resources if r.plural == plural and (r.group or "") == key[0])
            # as ``kubectl patch --type=merge`` does it: an Update by the field manager kubectl-patch
            srv._update(res, key, merge_patch(srv.objects[key], patch), subresource, manager="kubectl-patch")

        self.server.call(do)

    def delete(self, plural: str, name: str) -> None:
        self.server.call(lambda: self.server.server.delete_object(plural, self.namespace, name))

    def writes(self) -> int | None:
        return self.server.call(lambda: self.server.server.counters.writes)


class ClusterBackend:
    """``kubectl`` against ``$KUBECONFIG``, in a fresh namespace that is deleted afterwards."""

    real = True

    def __init__(self, namespace: str) -> None:
        self.namespace = namespace
        self.kubectl = shutil.which("kubectl") or "kubectl"

    def _run(self, *args: str, stdin: str | None = None) -> str:
        out = subprocess.run([self.kubectl, *args], input=stdin, capture_output=True, text=True, check=False)
        if out.returncode != 0 and "NotFound" not in out.stderr:
            raise RuntimeError(out.stderr)
        return out.stdout

    def __enter__(self) -> ClusterBackend:
        self._run("create", "namespace", self.namespace)
        return self

    def __exit__(self, *exc: object) -> None:
        self._run("delete", "namespace", self.namespace, "--wait=false")

    def operator(self, config: OperatorConfig | None = None) -> OperatorThread:
        config = config or OperatorConfig(
            standalone=True, metrics_port=0, health_port=0, resync_seconds=3600, namespaces=(self.namespace,)
        )
        return OperatorThread(None, config)  # Kopf's own kubeconfig login

    def apply(self, plural: str, body: dict[str, Any]) -> None:
        body = {**body, "metadata": {**body["metadata"], "namespace": self.namespace}}
        self._run("apply", "--server-side", "-f", "-", stdin=json.dumps(body))

    def get(self, plural: str, name: str) -> dict[str, Any] | None:
        out = self._run("get", plural, name, "-n", self.namespace, "-o", "json", "--ignore-not-found")
        return json.loads(out) if out.strip() else None

    def list(self, plural: str) -> list[dict[str, Any]]:
        return list(json.loads(self._run("get", plural, "-n", self.namespace, "-o", "json"))["items"])

    def patch(self, plural: str, name: str, patch: dict[str, Any], subresource: str | None = None) -> None:
        extra = [f"--subresource={subresource}"] if subresource else []
        self._run("patch", plural, name, "-n", self.namespace, "--type=merge", "-p", json.dumps(patch), *extra)

    def delete(self, plural: str, name: str) -> None:
        self._run("delete", plural, name, "-n", self.namespace, "--wait=false")

    def writes(self) -> int | None:
        return None  # a real API server does not count them for us
