"""Status as a pure function of the job, its observed children, the latest metrics and the time.

The reconciler calls ``compute_status`` once per reconcile and patches only when the result differs
from what is stored, so a steady job costs no writes. Metric values are rounded so that noise in
the last digits does not churn status. Terminal states stick: once Succeeded or Failed, only the
live numbers (ready replicas, rollout acceptance) move.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from typing import Literal

from mtp_api import contracts
from mtp_api import types as t
from mtp_operator import names
from mtp_operator.metrics_store import JobMetrics
from mtp_operator.observed import Observed

RATE_DIGITS = 3
LOSS_DIGITS = 4
TPS_DIGITS = 1
BAD_INPUT_EXIT_CODE = contracts.EXIT_INVALID_SPEC  # mtp_trainer.main's status for bad input

Status3 = Literal["True", "False", "Unknown"]
Cond = tuple[t.ConditionType, Status3, str, str]


@dataclass(frozen=True)
class Verdict:
    """The state and the conditions that explain it, before transition times are filled in."""

    state: t.JobState
    conditions: tuple[Cond, ...]


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


def verdict(
    job: t.MTPTrainingJob,
    observed: Observed,
    metrics: JobMetrics,
    now: datetime.datetime,
    start_time: datetime.datetime | None,
    invalid: str | None = None,
) -> Verdict:
    """The non-terminal decision table, first match wins."""
    C = t.ConditionType
    R = t.ConditionReason
    policy = job.spec.run_policy
    if invalid is not None:
        return Verdict(t.JobState.FAILED, ((C.FAILED, "True", R.INVALID_SPEC, invalid),))
    bad_input_pod = observed.trainer_pod_with_exit(BAD_INPUT_EXIT_CODE)
    if bad_input_pod is not None:  # a restart would fail the same way: stop now, not at backoffLimit
        ns = f" -n {job.metadata.namespace}" if job.metadata.namespace else ""
        msg = (
            f"the trainer exited with status {BAD_INPUT_EXIT_CODE} (bad input); look at the trainer pod's log, "
            f"which names the field and the fix: kubectl logs{ns} {bad_input_pod} -c trainer --previous"
        )
        return Verdict(t.JobState.FAILED, ((C.FAILED, "True", R.INVALID_SPEC, msg),))
    restarts = observed.trainer_restarts()
    if restarts > policy.backoff_limit:
        msg = f"trainer pods restarted {restarts} times, more than backoffLimit {policy.backoff_limit}"
        return Verdict(t.JobState.FAILED, ((C.FAILED, "True", R.BACKOFF_LIMIT_EXCEEDED, msg),))
    deadline = policy.active_deadline_seconds
    if deadline is not None and start_time is not None and (now - start_time).total_seconds() >= deadline:
        msg = f"running longer than activeDeadlineSeconds {deadline}"
        return Verdict(t.JobState.FAILED, ((C.FAILED, "True", R.DEADLINE_EXCEEDED, msg),))
    step = metrics.trainer.step if metrics.trainer else None
    max_steps = job.spec.trainer.hyperparameters.max_steps
    created = children_present(job, observed)
    if step is not None and step >= max_steps:
        return Verdict(
            t.JobState.SUCCEEDED,
            (
                (C.CREATED, "True", R.CHILDREN_CREATED, ""),
                (C.SUCCEEDED, "True", R.TRAINING_COMPLETED, f"trainer reached maxSteps {max_steps}"),
            ),
        )
    created_c: Cond = (
        (C.CREATED, "True", R.CHILDREN_CREATED, "")
        if created
        else (C.CREATED, "False", R.CHILDREN_CREATED, "creating children")
    )
    if policy.suspend:
        return Verdict(
            t.JobState.SUSPENDED,
            (created_c, (C.RUNNING, "False", R.SUSPENDED, ""), (C.SUSPENDED, "True", R.SUSPENDED, "")),
        )
    trainer_ready, rollout_ready = ready_counts(job, observed)
    want_rollout = job.spec.rollout.replicas if job.spec.rollout is not None else 0
    ready = created and trainer_ready >= job.spec.trainer.replicas and rollout_ready >= want_rollout
    running_c: Cond = (
        (C.RUNNING, "True", R.PODS_READY, "")
        if ready
        else (C.RUNNING, "False", R.PODS_NOT_READY, f"trainer {trainer_ready}/{job.spec.trainer.replicas} ready")
    )
    state = t.JobState.RUNNING if ready else t.JobState.CREATED if created else t.JobState.PENDING
    return Verdict(state, (created_c, running_c, (C.SUSPENDED, "False", R.RESUMED, "")))


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
    m = metrics.rollout
    per_pos = [round(x, RATE_DIGITS) for x in m.per_position_acceptance] if m and m.per_position_acceptance else None
    return t.RolloutStatus(
        ready_replicas=ready,
        acceptance_rate=_r(m.acceptance_rate, RATE_DIGITS) if m else None,
        mean_acceptance_length=_r(m.mean_acceptance_length, RATE_DIGITS) if m else None,
        per_position_acceptance=per_pos,
        tokens_per_second=_r(m.tokens_per_second, TPS_DIGITS) if m else None,
    )


def _rl_status(m: t.RLStatus) -> t.RLStatus:
    return m.model_copy(
        update={
            "reward_mean": _r(m.reward_mean, RATE_DIGITS),
            "accuracy": _r(m.accuracy, RATE_DIGITS),
            "acceptance_rate": _r(m.acceptance_rate, RATE_DIGITS),
            "mean_acceptance_length": _r(m.mean_acceptance_length, RATE_DIGITS),
        }
    )


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
    start = _parse(old.start_time) if old else None
    if start is None and not job.spec.run_policy.suspend and invalid is None:
        start = now
    decided = verdict(job, observed, metrics, now, start, invalid)
    terminal = decided.state in t.TERMINAL_STATES
    return t.MTPTrainingJobStatus(
        state=decided.state,
        conditions=_conditions(decided, old, now, generation),
        observed_generation=generation,
        start_time=_iso(start) if start else None,
        completion_time=_iso(now) if terminal else None,
        restarts=observed.trainer_restarts(),
        trainer=trainer,
        rollout=rollout,
        rl=rl,
    )
