"""Status as a pure function of the job, its observed children, the latest metrics and the time.

The reconciler calls ``compute_status`` once per reconcile and patches only when the result differs
from what is stored, so a steady job costs no writes. Metric values are rounded so that noise in
the last digits does not churn status. Terminal states stick: once Succeeded or Failed, only the
live numbers (ready replicas, rollout acceptance) move.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass, replace
from typing import Literal

from mtp_api import contracts
from mtp_api import types as t
from mtp_operator import names, speculation
from mtp_operator.metrics_store import JobMetrics
from mtp_operator.observed import Observed

RATE_DIGITS = 3
LOSS_DIGITS = 4
TPS_DIGITS = 1
BAD_INPUT_EXIT_CODE = contracts.EXIT_INVALID_SPEC  # mtp_trainer.main's status for bad input

Status3 = Literal["True", "False", "Unknown"]
Cond = tuple[t.ConditionType, Status3, str, str]


@dataclass(frozen=True)
class Incident:
    """Why the trainer group must restart: a reason (a ConditionReason) and what happened."""

    reason: t.ConditionReason
    message: str


@dataclass(frozen=True)
class Verdict:
    """The state and the conditions that explain it, before transition times are filled in; ``restarts``
    is the new group restart count and ``incident`` what this reconcile found, if anything."""

    state: t.JobState
    conditions: tuple[Cond, ...]
    restarts: int = 0
    incident: Incident | None = None


# Running=False reasons that mean "the group is coming back from a restart".
RESTART_REASONS = frozenset(
    {
        t.ConditionReason.TRAINER_FAILED,
        t.ConditionReason.EVICTED,
        t.ConditionReason.NODE_LOST,
        t.ConditionReason.STALLED,
    }
)


def _iso(now: datetime.datetime) -> str:
    return now.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _parse(ts: str | None) -> datetime.datetime | None:
    if not ts:
        return None
    return datetime.datetime.strptime(ts, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=datetime.UTC)


def _r(value: float | None, digits: int) -> float | None:
    return None if value is None else round(float(value), digits)


def children_present(job: t.MTPTrainingJob, observed: Observed) -> bool:
    want = [("ConfigMap", names.config_map(job)), ("Service", names.trainer(job)), ("StatefulSet", names.trainer(job))]
    if job.spec.rollout is not None:
        want += [("Service", names.rollout(job)), ("Deployment", names.rollout(job))]
        if job.spec.pipeline == t.Pipeline.RLVR:
            want.append(("Service", names.rollout_peers(job)))
    return all(observed.child(kind, name) is not None for kind, name in want)


def ready_counts(job: t.MTPTrainingJob, observed: Observed) -> tuple[int, int]:
    sts = observed.child("StatefulSet", names.trainer(job))
    dep = observed.child("Deployment", names.rollout(job))
    return (sts.ready_replicas if sts else 0), (dep.ready_replicas if dep else 0)


def completion(job: t.MTPTrainingJob, observed: Observed) -> str | None:
    """Rank 0's completion message, when its trainer container last exited 0 after writing the
    completion marker (the final checkpoint and export are on the volume): the one success signal."""
    rank0 = f"{names.trainer(job)}-0"
    return next((p.completion for p in observed.trainer_pods() if p.name == rank0 and p.completion), None)


def find_incident(
    job: t.MTPTrainingJob,
    observed: Observed,
    attempt: int,
    now: datetime.datetime,
    progress: datetime.datetime | None,
    resumed: datetime.datetime | None = None,
) -> Incident | None:
    """The first reason to restart the group, looking only at pods of the current ``attempt`` (older ones
    are the previous incident's, being deleted) that were not deleted before the last resume (those went
    because of the suspension), and at progress (``stallSeconds``) while running."""
    R = t.ConditionReason
    pods = [p for p in observed.trainer_pods(attempt) if not _deleted_before(p.deletion_timestamp, resumed)]
    for p in pods:
        if p.node_lost:
            return Incident(R.NODE_LOST, f"pod {p.name}: its node is unreachable ({p.disruption})")
    for p in pods:
        if p.disrupted:
            why = p.disruption or ("Failed" if p.failed else "deleted")
            return Incident(R.EVICTED, f"pod {p.name} was disrupted ({why})")
    for p in pods:
        code = p.last_exit_code("trainer")
        if code is not None and code != 0:
            return Incident(R.TRAINER_FAILED, f"pod {p.name}: the trainer exited with status {code}")
    stall = job.spec.run_policy.stall_seconds
    if stall is not None and progress is not None and (now - progress).total_seconds() >= stall:
        return Incident(R.STALLED, f"the trainer step has not moved for {stall}s (runPolicy.stallSeconds)")
    return None


def _deleted_before(deletion: str | None, resumed: datetime.datetime | None) -> bool:
    when = _parse(deletion)
    return when is not None and resumed is not None and when <= resumed


def verdict(
    job: t.MTPTrainingJob,
    observed: Observed,
    metrics: JobMetrics,
    now: datetime.datetime,
    start_time: datetime.datetime | None,
    invalid: str | None = None,
    *,
    restarts: int = 0,
    progress: datetime.datetime | None = None,
    previous_running: t.Condition | None = None,
    resumed: datetime.datetime | None = None,
) -> Verdict:
    """The non-terminal decision table, first match wins. ``restarts`` is the group restart count so far
    (the current attempt); ``progress`` when the step last moved while running (None when not running);
    ``previous_running`` the stored Running condition (it carries the last restart's reason); ``resumed``
    when the job was last resumed from a suspension."""
    del metrics  # success comes from pod state only; metrics feed status numbers and the stall clock
    C = t.ConditionType
    R = t.ConditionReason
    policy = job.spec.run_policy
    if invalid is not None:
        return Verdict(t.JobState.FAILED, ((C.FAILED, "True", R.INVALID_SPEC, invalid),), restarts)
    bad_input_pod = observed.trainer_pod_with_exit(contracts.EXIT_INVALID_SPEC, attempt=restarts)
    if bad_input_pod is not None:  # a restart would fail the same way: stop now, not at backoffLimit
        ns = f" -n {job.metadata.namespace}" if job.metadata.namespace else ""
        msg = (
            f"the trainer exited with status {contracts.EXIT_INVALID_SPEC} (bad input); look at the trainer pod's "
            f"log, which names the field and the fix: kubectl logs{ns} {bad_input_pod} -c trainer --previous"
        )
        return Verdict(t.JobState.FAILED, ((C.FAILED, "True", R.INVALID_SPEC, msg),), restarts)
    created = children_present(job, observed)
    created_c: Cond = (
        (C.CREATED, "True", R.CHILDREN_CREATED, "")
        if created
        else (C.CREATED, "False", R.CHILDREN_CREATED, "creating children")
    )
    done = completion(job, observed)
    if done is not None:
        msg = f"rank 0 made the final checkpoint and export durable and exited 0: {done}"
        return Verdict(t.JobState.SUCCEEDED, (created_c, (C.SUCCEEDED, "True", R.TRAINING_COMPLETED, msg)), restarts)
    if policy.suspend:
        return Verdict(
            t.JobState.SUSPENDED,
            (created_c, (C.RUNNING, "False", R.SUSPENDED, ""), (C.SUSPENDED, "True", R.SUSPENDED, "")),
            restarts,
        )
    deadline = policy.active_deadline_seconds
    if deadline is not None and start_time is not None and (now - start_time).total_seconds() >= deadline:
        msg = f"running longer than activeDeadlineSeconds {deadline} since it started or was last resumed"
        return Verdict(t.JobState.FAILED, ((C.FAILED, "True", R.DEADLINE_EXCEEDED, msg),), restarts)
    incident = find_incident(job, observed, restarts, now, progress, resumed)
    if incident is not None:
        restarts += 1
        if restarts > policy.backoff_limit:
            msg = (
                f"the trainer group needed restart {restarts}, more than backoffLimit {policy.backoff_limit}; "
                f"last: {incident.reason}: {incident.message}"
            )
            return Verdict(t.JobState.FAILED, ((C.FAILED, "True", R.BACKOFF_LIMIT_EXCEEDED, msg),), restarts, incident)
    trainer_ready, rollout_ready = ready_counts(job, observed)
    want_rollout = job.spec.rollout.replicas if job.spec.rollout is not None else 0
    ready = (
        incident is None
        and created
        and trainer_ready >= job.spec.trainer.replicas
        and rollout_ready >= want_rollout
        and all(p.attempt == restarts for p in observed.trainer_pods())
    )
    running_c: Cond
    if ready:
        running_c = (C.RUNNING, "True", R.PODS_READY, "")
    elif incident is not None:
        msg = f"restarting the trainer group (restart {restarts} of backoffLimit {policy.backoff_limit}): "
        running_c = (C.RUNNING, "False", incident.reason, msg + incident.message)
    elif previous_running is not None and previous_running.reason in RESTART_REASONS:
        running_c = (C.RUNNING, "False", previous_running.reason, previous_running.message)
    else:
        msg = f"trainer {trainer_ready}/{job.spec.trainer.replicas} ready"
        running_c = (C.RUNNING, "False", R.PODS_NOT_READY, msg)
    state = t.JobState.RUNNING if ready else t.JobState.CREATED if created else t.JobState.PENDING
    return Verdict(state, (created_c, running_c, (C.SUSPENDED, "False", R.RESUMED, "")), restarts, incident)


def _conditions(
    decided: Verdict, old: t.MTPTrainingJobStatus | None, now: datetime.datetime, generation: int | None
) -> list[t.Condition]:
    previous = {c.type: c for c in (old.conditions if old else [])}
    out = []
    for ctype, status, reason, message in decided.conditions:
        prev = previous.get(ctype)
        if ctype == t.ConditionType.SUSPENDED and status == "False" and prev is None:
            continue  # "Resumed" only means something after a suspension
        changed = prev is None or prev.status != status
        out.append(
            t.Condition(
                type=ctype,
                status=status,
                reason=reason,
                message=message,
                last_transition_time=_iso(now) if changed or prev is None else prev.last_transition_time,
                observed_generation=generation,
            )
        )
    return out


def _trainer_status(ready: int, metrics: JobMetrics) -> t.TrainerStatus:
    m = metrics.trainer
    return t.TrainerStatus(
        ready_replicas=ready,
        step=m.step if m else None,
        lm_loss=_r(m.lm_loss, LOSS_DIGITS) if m else None,
        mtp_loss=_r(m.mtp_loss, LOSS_DIGITS) if m else None,
    )


def _rollout_status(ready: int, metrics: JobMetrics) -> t.RolloutStatus:
    """The scraped rollout block as the collector rounded it (``rollout_status``, the one place that
    rounds acceptance), with this job's ready replica count."""
    m = metrics.rollout
    if m is None:
        return t.RolloutStatus(ready_replicas=ready)
    return m.model_copy(update={"ready_replicas": ready})


def _rl_status(m: t.RLStatus) -> t.RLStatus:
    return m.model_copy(
        update={
            "reward_mean": _r(m.reward_mean, RATE_DIGITS),
            "accuracy": _r(m.accuracy, RATE_DIGITS),
            "acceptance_rate": _r(m.acceptance_rate, RATE_DIGITS),
            "mean_acceptance_length": _r(m.mean_acceptance_length, RATE_DIGITS),
        }
    )


def _speculation(
    job: t.MTPTrainingJob, old: t.MTPTrainingJobStatus | None, metrics: JobMetrics
) -> tuple[t.SpeculationStatus | None, Cond | None]:
    """``status.speculation`` and the ``SpeculationCalibrated`` condition (auto only): the speculation
    round's latest report, else what is stored (a restarted operator resumes from it)."""
    if not speculation.is_auto(job):
        return None, None
    if metrics.speculation is not None:
        return metrics.speculation.status, speculation.condition(metrics.speculation)
    kind = t.ConditionType.SPECULATION_CALIBRATED
    prev = next((c for c in (old.conditions if old is not None else []) if c.type == kind), None)
    cond: Cond | None = (kind, prev.status, prev.reason, prev.message) if prev is not None else None
    return (old.speculation if old is not None else None), cond


def compute_status(
    job: t.MTPTrainingJob,
    old: t.MTPTrainingJobStatus | None,
    observed: Observed,
    metrics: JobMetrics,
    now: datetime.datetime,
    *,
    generation: int | None,
    invalid: str | None = None,
) -> t.MTPTrainingJobStatus:
    """The whole new status. ``old`` supplies transition times, start time and the sticky terminal state."""
    trainer_ready, rollout_ready = ready_counts(job, observed)
    trainer = _trainer_status(trainer_ready, metrics)
    if metrics.trainer is None and old is not None and old.trainer is not None:
        trainer = trainer.model_copy(
            update={"step": old.trainer.step, "lm_loss": old.trainer.lm_loss, "mtp_loss": old.trainer.mtp_loss}
        )
    rollout = _rollout_status(rollout_ready, metrics) if job.spec.rollout is not None else None
    rl = None  # rlvr: the latest RL step rank 0 reported, kept while rank 0 cannot be scraped
    if job.spec.pipeline == t.Pipeline.RLVR:
        rl = _rl_status(metrics.rl) if metrics.rl is not None else old.rl if old is not None else None
    if old is not None and old.state in t.TERMINAL_STATES:
        return old.model_copy(update={"trainer": trainer, "rollout": rollout, "rl": rl})
    # The deadline clock: cleared while suspended and started again at resume, as Job's startTime.
    start = _parse(old.start_time) if old else None
    if job.spec.run_policy.suspend:
        start = None
    elif start is None and invalid is None:
        start = now
    # The stall clock: when the step last moved while the group was running.
    was_running = old is not None and old.state == t.JobState.RUNNING
    moved = old is None or old.trainer is None or old.trainer.step != trainer.step
    progress = _parse(old.last_progress_time) if was_running and not moved and old is not None else None
    if was_running and progress is None:
        progress = now
    previous = {c.type: c for c in (old.conditions if old else [])}
    suspended = previous.get(t.ConditionType.SUSPENDED)
    resumed = None  # pods deleted by then went because of a suspension: no incident
    if suspended is not None:
        resumed = now if suspended.status == "True" else _parse(suspended.last_transition_time)
    decided = verdict(
        job,
        observed,
        metrics,
        now,
        start,
        invalid,
        restarts=old.restarts if old is not None else 0,
        progress=progress,
        previous_running=previous.get(t.ConditionType.RUNNING),
        resumed=resumed,
    )
    spec_status, spec_cond = _speculation(job, old, metrics) if invalid is None else (None, None)
    if spec_cond is not None:
        decided = replace(decided, conditions=(*decided.conditions, spec_cond))
    terminal = decided.state in t.TERMINAL_STATES
    running = decided.state == t.JobState.RUNNING
    return t.MTPTrainingJobStatus(
        state=decided.state,
        conditions=_conditions(decided, old, now, generation),
        observed_generation=generation,
        start_time=_iso(start) if start else None,
        completion_time=_iso(now) if terminal else None,
        restarts=decided.restarts,
        last_progress_time=_iso(progress or now) if running else None,
        trainer=trainer,
        rollout=rollout,
        rl=rl,
        speculation=spec_status,
    )
