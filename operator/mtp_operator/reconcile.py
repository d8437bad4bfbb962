"""The one reconcile path: create, update, resume, suspend and resync all come through ``reconcile``.

In order, as kubeflow/trainer's controller does it:
1. read the job (typed) and what is observed of its children (from memory);
2. compute the status once; it decides how many pods should run (suspend, terminal states);
3. unless the job is terminal or being deleted, build the desired children and apply them;
4. patch status only if it differs from what is stored.
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
from mtp_operator import metrics
from mtp_operator.apply import apply_children
from mtp_operator.builders.common import BuildError
from mtp_operator.children import Scale, desired_children
from mtp_operator.kube import Kube
from mtp_operator.metrics_store import JobKey
from mtp_operator.observed import Observed
from mtp_operator.runtime import Runtime
from mtp_operator.status import compute_status


@dataclass
class Outcome:
    actions: list[str] = field(default_factory=list)
    status_patched: bool = False
    state: t.JobState | None = None


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


def _scale(job: t.MTPTrainingJob, state: t.JobState | None) -> Scale:
    suspended = job.spec.run_policy.suspend
    return Scale(
        trainer=not suspended and state not in t.TERMINAL_STATES,
        rollout=not suspended and state != t.JobState.FAILED,
    )


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
    outcome = Outcome(state=status.state)
    was_terminal = old is not None and old.state in t.TERMINAL_STATES
    if job is not None and not was_terminal and not meta.get("deletionTimestamp"):
        desired = _desired(key, job, _scale(job, status.state), runtime)
        outcome.actions = await apply_children(kube, namespace, desired, observed, runtime.written[key])
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


def _build(key: JobKey, body: Mapping[str, Any], runtime: Runtime) -> tuple[t.MTPTrainingJob | None, str | None]:
    """The typed job (or why it is invalid), cached per uid and generation."""
    meta = body.get("metadata") or {}
    version = (str(meta.get("uid", "")), int(meta.get("generation") or 0))
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


def _desired(key: JobKey, job: t.MTPTrainingJob, scale: Scale, runtime: Runtime) -> list[dict[str, Any]]:
    cache: dict[Scale, list[dict[str, Any]]] = runtime.built[key][1]["desired"] if key in runtime.built else {}
    if scale not in cache:
        cache[scale] = desired_children(job, scale)
    return cache[scale]


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
