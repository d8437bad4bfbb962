"""What the operator has seen of a job's children, reduced to the fields that status and apply need.

The summaries are built from watch events (Kopf indexes, see ``handlers.py``), so a reconcile reads
the cluster's state from memory and an idle reconcile makes no API request at all.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from mtp_operator import names

ChildKey = tuple[str, str]  # kind, name


@dataclass(frozen=True)
class ChildState:
    kind: str
    name: str
    uid: str
    spec_hash: str | None
    replicas: int | None = None
    ready_replicas: int = 0


@dataclass(frozen=True)
class PodState:
    name: str
    component: str
    ready: bool
    restarts: int
    failed: bool
    ip: str = ""
    # (container, exit code) of each container's latest termination: the current state's when it is
    # terminated, else lastState's. Containers that never terminated are absent.
    last_exit_codes: tuple[tuple[str, int], ...] = ()

    def last_exit_code(self, container: str) -> int | None:
        return dict(self.last_exit_codes).get(container)


@dataclass(frozen=True)
class Observed:
    children: Mapping[ChildKey, ChildState] = field(default_factory=dict)
    pods: tuple[PodState, ...] = ()

    def child(self, kind: str, name: str) -> ChildState | None:
        return self.children.get((kind, name))

    def trainer_restarts(self) -> int:
        return sum(p.restarts for p in self.pods if p.component == names.COMPONENT_TRAINER)

    def trainer_pod_with_exit(self, code: int) -> str | None:
        """The first trainer pod whose trainer container last exited with ``code``."""
        return next(
            (
                p.name
                for p in self.pods
                if p.component == names.COMPONENT_TRAINER and p.last_exit_code("trainer") == code
            ),
            None,
        )


def summarize_child(kind: str, body: Mapping[str, Any]) -> ChildState:
    meta = body.get("metadata") or {}
    spec = body.get("spec") or {}
    status = body.get("status") or {}
    return ChildState(
        kind=kind,
        name=meta.get("name", ""),
        uid=meta.get("uid", ""),
        spec_hash=(meta.get("annotations") or {}).get(names.ANNOTATION_SPEC_HASH),
        replicas=spec.get("replicas"),
        ready_replicas=int(status.get("readyReplicas") or 0),
    )


def _last_exit_code(container_status: Mapping[str, Any]) -> int | None:
    for key in ("state", "lastState"):
        terminated = (container_status.get(key) or {}).get("terminated")
        if terminated and terminated.get("exitCode") is not None:
            return int(terminated["exitCode"])
    return None


def summarize_pod(body: Mapping[str, Any]) -> PodState:
    meta = body.get("metadata") or {}
    status = body.get("status") or {}
    statuses = status.get("containerStatuses") or []
    ready = any(c.get("type") == "Ready" and c.get("status") == "True" for c in status.get("conditions") or [])
    return PodState(
        name=meta.get("name", ""),
        component=(meta.get("labels") or {}).get(names.LABEL_COMPONENT, ""),
        ready=ready,
        restarts=sum(int(c.get("restartCount") or 0) for c in statuses),
        failed=status.get("phase") == "Failed",
        ip=str(status.get("podIP") or ""),
        last_exit_codes=tuple(
            (str(c.get("name", "")), code) for c in statuses if (code := _last_exit_code(c)) is not None
        ),
    )


def observed_from(children: Iterable[ChildState], pods: Iterable[PodState]) -> Observed:
    return Observed({(c.kind, c.name): c for c in children}, tuple(sorted(pods, key=lambda p: p.name)))
