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


@dataclass(frozen=True)
class Observed:
    children: Mapping[ChildKey, ChildState] = field(default_factory=dict)
    pods: tuple[PodState, ...] = ()

    def child(self, kind: str, name: str) -> ChildState | None:
        return self.children.get((kind, name))

    def trainer_restarts(self) -> int:
        return sum(p.restarts for p in self.pods if p.component == names.COMPONENT_TRAINER)


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
    )


def observed_from(children: Iterable[ChildState], pods: Iterable[PodState]) -> Observed:
    return Observed({(c.kind, c.name): c for c in children}, tuple(sorted(pods, key=lambda p: p.name)))
