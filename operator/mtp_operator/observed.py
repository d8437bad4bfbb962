"""What the operator has seen of a job's children, reduced to the fields that status and apply need.

The summaries are built from watch events (Kopf indexes, see ``handlers.py``), so a reconcile reads
the cluster's state from memory and an idle reconcile makes no API request at all.
"""

from __future__ import annotations

import datetime
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from mtp_api import contracts
from mtp_operator import names, ownership

ChildKey = tuple[str, str]  # kind, name


@dataclass(frozen=True)
class ChildState:
    kind: str
    name: str
    uid: str
    spec_hash: str | None
    replicas: int | None = None
    ready_replicas: int = 0
    resource_version: str = ""
    # The operator's applied fields (fieldsV1 JSON of its Apply entry in managedFields); None when it has none.
    applied_fields: str | None = None


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
    attempt: int = 0  # the mtp.io/restart-attempt label (0 when absent)
    # The trainer container's latest termination was exit 0 with the completion message: its content.
    completion: str | None = None
    deletion_timestamp: str | None = None
    deletion_grace_seconds: int = 0
    # Why the pod is going away, from the pod: status.reason (Evicted, NodeLost, ...) or the reason of a
    # DisruptionTarget=True condition (PreemptionByScheduler, DeletionByTaintManager, ...); "" when none.
    disruption: str = ""

    def last_exit_code(self, container: str) -> int | None:
        return dict(self.last_exit_codes).get(container)

    @property
    def node_lost(self) -> bool:
        """Its node stopped answering: the node lifecycle controller's marks on the pod."""
        return self.disruption in NODE_LOST_REASONS

    @property
    def disrupted(self) -> bool:
        """Evicted, preempted, drained, deleted or on a lost node: the pod is going or gone."""
        return self.failed or self.deletion_timestamp is not None or bool(self.disruption)

    def stuck_terminating(self, now: datetime.datetime) -> bool:
        """Deleted, and either on a lost node (its kubelet will never confirm) or past its grace period by
        ``STUCK_AFTER_SECONDS``: only a force delete (grace 0) frees its name for the replacement."""
        if self.deletion_timestamp is None:
            return False
        if self.node_lost:
            return True
        since = datetime.datetime.strptime(self.deletion_timestamp, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=datetime.UTC)
        return (now - since).total_seconds() >= self.deletion_grace_seconds + STUCK_AFTER_SECONDS


NODE_LOST_REASONS = frozenset({"NodeLost", "DeletionByTaintManager"})
STUCK_AFTER_SECONDS = 60


@dataclass(frozen=True)
class Observed:
    children: Mapping[ChildKey, ChildState] = field(default_factory=dict)
    pods: tuple[PodState, ...] = ()

    def child(self, kind: str, name: str) -> ChildState | None:
        return self.children.get((kind, name))

    def trainer_pods(self, attempt: int | None = None) -> list[PodState]:
        """The trainer pods, or only those of one restart attempt."""
        return [
            p for p in self.pods if p.component == names.COMPONENT_TRAINER and (attempt is None or p.attempt == attempt)
        ]

    def trainer_pod_with_exit(self, code: int, attempt: int | None = None) -> str | None:
        """The first trainer pod (of ``attempt``) whose trainer container last exited with ``code``."""
        return next((p.name for p in self.trainer_pods(attempt) if p.last_exit_code("trainer") == code), None)


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
        resource_version=str(meta.get("resourceVersion") or ""),
        applied_fields=ownership.applied_fields(meta.get("managedFields")),
    )


def _last_exit_code(container_status: Mapping[str, Any]) -> int | None:
    for key in ("state", "lastState"):
        terminated = (container_status.get(key) or {}).get("terminated")
        if terminated and terminated.get("exitCode") is not None:
            return int(terminated["exitCode"])
    return None


def _completion(container_status: Mapping[str, Any]) -> str | None:
    """The trainer's completion message when its latest termination is exit 0 with that message."""
    for key in ("state", "lastState"):
        terminated = (container_status.get(key) or {}).get("terminated")
        if terminated and terminated.get("exitCode") is not None:
            message = str(terminated.get("message") or "")
            if int(terminated["exitCode"]) == 0 and message.startswith(contracts.COMPLETION_MESSAGE_PREFIX):
                return message[len(contracts.COMPLETION_MESSAGE_PREFIX) :]
            return None
    return None


def _disruption(status: Mapping[str, Any]) -> str:
    for c in status.get("conditions") or []:
        if c.get("type") == "DisruptionTarget" and c.get("status") == "True":
            return str(c.get("reason") or "DisruptionTarget")
    return str(status.get("reason") or "")


def summarize_pod(body: Mapping[str, Any]) -> PodState:
    meta = body.get("metadata") or {}
    status = body.get("status") or {}
    statuses = status.get("containerStatuses") or []
    ready = any(c.get("type") == "Ready" and c.get("status") == "True" for c in status.get("conditions") or [])
    labels = meta.get("labels") or {}
    attempt = str(labels.get(names.LABEL_RESTART_ATTEMPT, "0"))
    trainer = next((c for c in statuses if c.get("name") == "trainer"), None)
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
        attempt=int(attempt) if attempt.isdigit() else 0,
        completion=_completion(trainer) if trainer is not None else None,
        deletion_timestamp=meta.get("deletionTimestamp"),
        deletion_grace_seconds=int(meta.get("deletionGracePeriodSeconds") or 0),
        disruption=_disruption(status),
    )


def observed_from(children: Iterable[ChildState], pods: Iterable[PodState]) -> Observed:
    return Observed({(c.kind, c.name): c for c in children}, tuple(sorted(pods, key=lambda p: p.name)))
