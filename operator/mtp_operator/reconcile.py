"""The one reconcile path: create, update, resume, suspend and resync all come through ``reconcile``.

In order, as kubeflow/trainer's controller does it:
1. read the job (typed) and what is observed of its children (from memory);
2. compute the status once; it decides how many pods should run (suspend, terminal states) and the
   trainer group's restart attempt (``status.restarts``);
3. unless the job is terminal or being deleted, build the desired children and apply them, then delete
   every trainer pod of an older restart attempt (a group restart); force-delete pods stuck on a lost node;
4. patch status only if it differs from what is stored; the Events to post are returned in ``Outcome``.
No handler sleeps: a failure raises, and the next event or resync tick runs the same path again.
"""

from __future__ import annotations

import datetime
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from mtp_api import types as t
from mtp_api.validation import semantic_checks
from mtp_operator import metrics, speculation
from mtp_operator.apply import apply_children, prune_children
from mtp_operator.builders.common import BuildError
from mtp_operator.children import Scale, desired_children, stable_hash
from mtp_operator.kube import Kube, NotFound, collection
from mtp_operator.metrics_store import JobKey
from mtp_operator.observed import Observed
from mtp_operator.runtime import Runtime
from mtp_operator.status import compute_status
from mtp_rollout.interface import Schedule

# (type, reason, message) of a Kubernetes Event about the job.
Event = tuple[str, str, str]


@dataclass
class Outcome:
    actions: list[str] = field(default_factory=list)
    status_patched: bool = False
    state: t.JobState | None = None
    events: list[Event] = field(default_factory=list)


def parse_job(body: Mapping[str, Any]) -> tuple[t.MTPTrainingJob | None, str | None]:
    """The typed job, or None and the reason it cannot be reconciled."""
    meta = body.get("metadata") or {}
    doc = {
        "apiVersion": body.get("apiVersion", t.API_VERSION),
        "kind": body.get("kind", t.KIND),
        "metadata": {k: meta[k] for k in ("name", "namespace", "uid", "labels", "annotations") if k in meta},
        "spec": body.get("spec") or {},
    }
    try:
        job = t.MTPTrainingJob.model_validate(doc)
    except ValidationError as exc:
        first = exc.errors()[0]
        return None, f"{'.'.join(str(p) for p in first['loc'])}: {first['msg']}"
    errors, _ = semantic_checks(job)
    if errors:
        return None, "; ".join(str(e) for e in errors)
    return job, None


def parse_status(raw: Mapping[str, Any] | None) -> t.MTPTrainingJobStatus | None:
    if not raw:
        return None
    known = {f.alias or n for n, f in t.MTPTrainingJobStatus.model_fields.items()}
    try:
        return t.MTPTrainingJobStatus.model_validate({k: v for k, v in raw.items() if k in known})
    except ValidationError:
        return None


def _status_patch(old: Any, new: Any) -> Any:
    """A merge patch from ``old`` to ``new``: removed keys become null so they are really removed."""
    if not isinstance(old, dict) or not isinstance(new, dict):
        return new
    out = {k: _status_patch(old.get(k), v) for k, v in new.items() if old.get(k) != v}
    out.update({k: None for k in old if k not in new})
    return out


def _scale(job: t.MTPTrainingJob, status: t.MTPTrainingJobStatus) -> Scale:
    suspended = job.spec.run_policy.suspend
    return Scale(
        trainer=not suspended and status.state not in t.TERMINAL_STATES,
        rollout=not suspended and status.state != t.JobState.FAILED,
        attempt=status.restarts,
    )


def events(old: t.MTPTrainingJobStatus | None, new: t.MTPTrainingJobStatus) -> list[Event]:
    """The Events a status transition deserves: each group restart (its reason), the end, and for
    ``numSpeculativeTokens: auto`` a new schedule or a calibration that cannot be used."""
    out: list[Event] = []
    conds = {c.type: c for c in new.conditions}
    old_state = old.state if old is not None else None
    if new.state != old_state and new.state in t.TERMINAL_STATES:
        c = conds[t.ConditionType.SUCCEEDED if new.state == t.JobState.SUCCEEDED else t.ConditionType.FAILED]
        out.append(("Normal" if new.state == t.JobState.SUCCEEDED else "Warning", c.reason, c.message))
    elif new.restarts > (old.restarts if old is not None else 0) and t.ConditionType.RUNNING in conds:
        c = conds[t.ConditionType.RUNNING]
        out.append(("Warning", c.reason, c.message))
    elif new.state == t.JobState.SUSPENDED and old_state != t.JobState.SUSPENDED:
        out.append(("Normal", t.ConditionReason.SUSPENDED, "runPolicy.suspend: every pod scaled to 0"))
    return out + speculation.events(old, new)


async def _restart_group(
    kube: Kube, namespace: str, observed: Observed, attempt: int, now: datetime.datetime
) -> list[str]:
    """Delete every trainer pod of an older attempt (all ranks go together, and the StatefulSet, whose
    update strategy is OnDelete, recreates them from the template of ``attempt``); force-delete any
    trainer pod stuck terminating (lost node). Idempotent: a pod already going is not deleted again."""
    actions = []
    for pod in observed.trainer_pods():
        if pod.stuck_terminating(now):
            await kube.delete(namespace, "Pod", pod.name, force=True)
            actions.append(f"force-delete Pod/{pod.name} (stuck terminating)")
        elif pod.attempt != attempt and pod.deletion_timestamp is None:
            await kube.delete(namespace, "Pod", pod.name)
            actions.append(f"delete Pod/{pod.name} (group restart {attempt})")
    return actions


async def reconcile(
    body: Mapping[str, Any],
    observed: Observed,
    runtime: Runtime,
    kube: Kube,
    now: datetime.datetime,
) -> Outcome:
    meta = body.get("metadata") or {}
    key: JobKey = (meta.get("namespace", ""), meta.get("name", ""))
    async with runtime.locks[key]:
        return await _reconcile_locked(key, body, observed, runtime, kube, now)


async def _reconcile_locked(
    key: JobKey, body: Mapping[str, Any], observed: Observed, runtime: Runtime, kube: Kube, now: datetime.datetime
) -> Outcome:
    namespace, name = key
    meta = body.get("metadata") or {}
    stored = runtime.status_written.get(key, dict(body.get("status") or {}))
    old = parse_status(stored)
    job, invalid = _build(key, body, runtime)
    typed = job or _placeholder(body)
    status = compute_status(
        typed,
        old,
        observed,
        runtime.metrics.get(namespace, name),
        now,
        generation=meta.get("generation"),
        invalid=invalid,
    )
    outcome = Outcome(state=status.state, events=events(old, status))
    was_terminal = old is not None and old.state in t.TERMINAL_STATES
    if job is not None and not was_terminal and not meta.get("deletionTimestamp"):
        schedule = speculation.applied_schedule(job, status.speculation)
        desired = _desired(key, job, _scale(job, status), schedule, runtime)
        if _creates(desired, observed, runtime.written[key]) and not await _exists(kube, namespace, name):
            return outcome  # the job is gone and its watch event not yet here: create no orphans
        written = runtime.written[key]
        outcome.actions = await apply_children(kube, namespace, desired, observed, written, runtime.owned[key])
        outcome.actions += await prune_children(kube, namespace, desired, observed, written)
        if status.state not in t.TERMINAL_STATES:
            outcome.actions += await _restart_group(kube, namespace, observed, status.restarts, now)
    new_wire = status.wire()
    old_wire = {k: v for k, v in stored.items() if k in new_wire or k in _STATUS_KEYS}
    if new_wire != old_wire and not meta.get("deletionTimestamp"):
        await kube.merge_patch(namespace, t.KIND, name, {"status": _status_patch(old_wire, new_wire)}, "status")
        metrics.CHILD_WRITES.labels(t.KIND, "status").inc()
        runtime.status_written[key] = new_wire
        outcome.status_patched = True
    metrics.observe_job(namespace, name, job, status)
    ttl = typed.spec.run_policy.ttl_seconds_after_finished if job is not None else None
    if was_terminal and ttl is not None and old is not None and old.completion_time:
        finished = datetime.datetime.strptime(old.completion_time, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=datetime.UTC)
        if (now - finished).total_seconds() >= ttl:
            await kube.delete(namespace, t.KIND, name)
            outcome.actions.append(f"delete {t.KIND}/{name} (ttlSecondsAfterFinished)")
    return outcome


def _creates(desired: list[dict[str, Any]], observed: Observed, written: Mapping[Any, str]) -> bool:
    """Whether applying ``desired`` would create a child (rare: the first reconcile, or a child deleted)."""
    return any(
        observed.child(o["kind"], o["metadata"]["name"]) is None and (o["kind"], o["metadata"]["name"]) not in written
        for o in desired
    )


async def _exists(kube: Kube, namespace: str, name: str) -> bool:
    """One GET before a create: a child event can arrive after the job was deleted (it has no finalizer)."""
    try:
        await kube.get(f"{collection(t.KIND, namespace)}/{name}")
    except NotFound:
        return False
    return True


def _build(key: JobKey, body: Mapping[str, Any], runtime: Runtime) -> tuple[t.MTPTrainingJob | None, str | None]:
    """The typed job (or why it is invalid), cached per uid and generation."""
    meta = body.get("metadata") or {}
    # Labels and annotations reach the children, and change no generation: they are part of the key.
    version = (
        str(meta.get("uid", "")),
        int(meta.get("generation") or 0),
        stable_hash([meta.get("labels") or {}, meta.get("annotations") or {}]),
    )
    cached = runtime.built.get(key)
    if cached is not None and cached[0] == version:
        return cached[1]["job"], cached[1]["invalid"]
    job, invalid = parse_job(body)
    if job is not None:
        try:
            desired_children(job)  # builds fail early, before any status is decided
        except BuildError as exc:
            job, invalid = None, str(exc)
    runtime.built[key] = (version, {"job": job, "invalid": invalid, "desired": {}})
    return job, invalid


def _desired(
    key: JobKey, job: t.MTPTrainingJob, scale: Scale, schedule: Schedule | None, runtime: Runtime
) -> list[dict[str, Any]]:
    cache: dict[Any, list[dict[str, Any]]] = runtime.built[key][1]["desired"] if key in runtime.built else {}
    at = (scale, None if schedule is None else (schedule.engine, schedule.ranges))
    if at not in cache:
        cache[at] = desired_children(job, scale, schedule)
    return cache[at]


_STATUS_KEYS = {f.alias or n for n, f in t.MTPTrainingJobStatus.model_fields.items()}


def _placeholder(body: Mapping[str, Any]) -> t.MTPTrainingJob:
    """A minimal typed job for an invalid spec, so the status can still say why it failed."""
    del body
    return t.MTPTrainingJob.model_validate(
        {
            "metadata": {"name": "invalid"},
            "spec": {
                "pipeline": "sft",
                "model": {"source": {"path": "/invalid"}},
                "trainer": {"data": {"trainFiles": ["invalid"]}},
            },
        }
    )
