"""``numSpeculativeTokens: auto``: the operator's closed loop around ``mtp_rollout.speculation.decide``.

Each scrape round of the periodic loop (``periodic.py``) runs ``SpeculationRound.round`` for every job:

1. it reads the calibration ConfigMap (``spec.rollout.speculative.calibration``) in the job's namespace;
   a missing ConfigMap or key, or a calibration that does not validate, becomes the condition
   ``SpeculationCalibrated=False`` (``CalibrationMissing`` / ``CalibrationInvalid``, with the fix) and a
   Warning Event, and the rollout keeps what it runs (the maximum k before any decision);
2. it turns the scraper's latest window (``LatestMetrics.put_window``) into an ``AcceptanceWindow`` and
   calls ``decide`` with the controller state rebuilt from ``status.speculation``, which is the
   controller's memory: a restarted operator resumes with the running schedule, its start, the smoothed
   acceptance and the last weight version;
3. it puts the next ``status.speculation`` into the store, and the caller runs the job's reconcile, which
   copies it into status, posts ``SpeculationScheduleChanged`` and re-renders the rollout Deployment from
   ``(job, applied_schedule(...))`` through ``server_plan(..., schedule=...)``: a new pod template, which
   Kubernetes rolls.

Safe points: for rlvr only a weight version (``status.rl.weightVersion``) newer than the one recorded at
the last decision (the sync boundary); for the other pipelines every round, the change being a rolling
update. The first decision waits for a window with ``minDrafts`` drafts: decided without evidence, the
controller's first schedule is the plain engine, which drafts nothing and so would never be measured.

Between status writes the newest status is kept in memory (``Runtime.speculation``), and it is put in the
store only when the schedule or the condition changes, or ``status_min_interval_seconds`` after the
previous put, so acceptance noise does not churn status.
"""

from __future__ import annotations

import datetime
import json
import math
import time
from collections.abc import Callable, Mapping
from typing import Any, Literal

from mtp_api import types as t
from mtp_operator.kube import Kube, NotFound, collection
from mtp_operator.metrics_store import JobKey, JobMetrics, LatestMetrics, RolloutWindow, SpeculationReport
from mtp_rollout.interface import (
    AcceptanceWindow,
    Calibration,
    CalibrationError,
    ControllerConfig,
    ControllerState,
    Schedule,
    decide,
    step_seconds,
    unconditional_from_depth_accuracy,
)

# The largest batch a schedule covers: vLLM's default max_num_seqs (the launcher sets none); vLLM carries
# the last range's k beyond it anyway.
MAX_BATCH = 256
GAIN_DIGITS = 3
ACCEPTANCE_DIGITS = 3
FIX = "write one with `mtpjob bench-rollout --calibrate` and `kubectl apply` the ConfigMap it prints"

Event = tuple[str, str, str]
Problem = tuple[t.ConditionReason, str]


def _iso(when: datetime.datetime) -> str:
    return when.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _epoch(ts: str | None) -> float | None:
    if not ts:
        return None
    return datetime.datetime.strptime(ts, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=datetime.UTC).timestamp()


def _r(value: float | None, digits: int = GAIN_DIGITS) -> float | None:
    return None if value is None or not math.isfinite(value) else round(float(value), digits)


def is_auto(job: t.MTPTrainingJob) -> bool:
    rollout = job.spec.rollout
    return rollout is not None and rollout.speculative.method == t.SpeculativeMethod.MTP and rollout.speculative.is_auto


# ------------------------------------------------------------------------------------- calibration


def calibration_from_config_map(
    body: Mapping[str, Any] | None, ref: t.CalibrationRef, namespace: str
) -> tuple[Calibration | None, Problem | None]:
    """The calibration in ConfigMap ``body`` (None: it does not exist), or why there is none."""
    where = f"ConfigMap {namespace}/{ref.config_map}"
    if body is None:
        return None, (t.ConditionReason.CALIBRATION_MISSING, f"{where} not found (calibration.configMap); {FIX}")
    raw = (body.get("data") or {}).get(ref.key)
    if raw is None:
        msg = f"{where} has no key {ref.key!r} (calibration.key); {FIX}"
        return None, (t.ConditionReason.CALIBRATION_MISSING, msg)
    try:
        doc = json.loads(raw)
    except json.JSONDecodeError as exc:
        return None, (t.ConditionReason.CALIBRATION_INVALID, f"{where} key {ref.key!r} is not JSON ({exc}); {FIX}")
    try:
        return Calibration.from_json(doc), None
    except CalibrationError as exc:
        return None, (t.ConditionReason.CALIBRATION_INVALID, f"{where} key {ref.key!r}: {exc}")


async def read_calibration(kube: Kube, job: t.MTPTrainingJob) -> tuple[Calibration | None, Problem | None]:
    rollout = job.spec.rollout
    assert rollout is not None and rollout.speculative.calibration is not None
    ref = rollout.speculative.calibration
    namespace = job.metadata.namespace or ""
    try:
        body = await kube.get(f"{collection('ConfigMap', namespace)}/{ref.config_map}")
    except NotFound:
        body = None
    return calibration_from_config_map(body, ref, namespace)


def calibration_summary(cal: Calibration) -> t.CalibrationSummary:
    return t.CalibrationSummary(
        model=cal.model,
        hardware=cal.hardware,
        dtype=cal.dtype,
        batch_sizes=list(cal.batch_sizes),
        max_k=cal.max_k,
        created=cal.created,
    )


# ------------------------------------------------------------------------------------- state <-> status


def applied_schedule(job: t.MTPTrainingJob, status: t.SpeculationStatus | None) -> Schedule | None:
    """The schedule the rollout runs: the controller's once it has applied one (``since`` set), else None,
    which ``server_plan`` renders as the maximum k. A status that does not make a schedule reads as None."""
    if not is_auto(job) or status is None or status.since is None:
        return None
    assert job.spec.rollout is not None
    try:
        return Schedule(
            engine="plain" if status.engine == t.SpeculationEngine.PLAIN else "speculative",
            max_k=job.spec.rollout.speculative.max_k,
            ranges=tuple((r.from_batch, r.to_batch, r.k) for r in status.schedule),
            predicted_gain={},
            weighted_gain=status.predicted_gain or 1.0,
        )
    except ValueError:
        return None


def controller_state(job: t.MTPTrainingJob, status: t.SpeculationStatus | None) -> ControllerState:
    """The controller's state as ``status.speculation`` records it."""
    if status is None:
        return ControllerState()
    smoothed = tuple(status.smoothed_per_position) if status.smoothed_per_position else None
    schedule = applied_schedule(job, status)
    return ControllerState(schedule, _epoch(status.since) if schedule else None, smoothed)


def controller_config(settings: t.AutoSpeculation) -> ControllerConfig:
    return ControllerConfig(
        min_dwell_s=float(settings.min_dwell_seconds), hysteresis=settings.hysteresis, min_drafts=settings.min_drafts
    )


def acceptance_window(window: RolloutWindow | None) -> AcceptanceWindow:
    """vLLM's positions (0-based; a position without a series accepted nothing) as the controller's tuple."""
    if window is None:
        return AcceptanceWindow((), 0.0, "rollout")
    per_pos = window.figures.per_position
    values = tuple(per_pos.get(i, 0.0) for i in range(max(per_pos) + 1)) if per_pos else ()
    return AcceptanceWindow(values, window.figures.inc.drafts, "rollout", window.batch_size)


def measured_gain(window: RolloutWindow | None, cal: Calibration) -> float | None:
    """Generated tokens/s of the window over what the plain engine would do at the same batch size on as
    many replicas: ``replicas * b / plain_step_s(b)``. None without traffic or without a batch size."""
    if window is None or window.batch_size is None or window.replicas < 1:
        return None
    b = window.batch_size
    rate = window.figures.generation_tokens_per_second
    if rate is None or rate <= 0 or not (math.isfinite(b) and b > 0):
        return None
    return rate / (window.replicas * b / step_seconds(cal, None, b))


def _ranges(schedule: Schedule) -> list[t.ScheduleRange]:
    return [t.ScheduleRange(from_batch=s, to_batch=e, k=k) for s, e, k in schedule.ranges]


def initial_status(job: t.MTPTrainingJob, cal: Calibration | None) -> t.SpeculationStatus:
    """Before the first decision: the engine drafts the maximum k everywhere."""
    assert job.spec.rollout is not None
    k = job.spec.rollout.speculative.max_k
    return t.SpeculationStatus(
        engine=t.SpeculationEngine.SPECULATIVE,
        schedule=[t.ScheduleRange(from_batch=1, to_batch=MAX_BATCH, k=k)],
        description=f"speculative: k={k} for 1-{MAX_BATCH} (the maximum, until the first decision)",
        calibration=calibration_summary(cal) if cal is not None else None,
    )


def next_status(
    job: t.MTPTrainingJob,
    old: t.SpeculationStatus | None,
    window: RolloutWindow | None,
    cal: Calibration,
    *,
    now: datetime.datetime,
    weight_version: int | None,
    trainer_agreement: list[float] | None = None,
) -> tuple[t.SpeculationStatus, bool]:
    """One decision point, pure: the next ``status.speculation`` and whether it changes the schedule.

    While the engine is plain it drafts nothing, so the rollout has no acceptance to show; the
    evidence is then the trainer's per-depth MTP agreement on its latest step (``status.trainer``),
    which is how speculation comes back once the head recovers."""
    assert job.spec.rollout is not None
    spec = job.spec.rollout.speculative
    config = controller_config(spec.auto_settings)
    now = now.replace(microsecond=0)  # status keeps whole seconds; so does the dwell clock
    base = old if old is not None and old.since is not None else initial_status(job, cal)
    state = controller_state(job, old)
    recorded = old.last_decision.weight_version if old is not None and old.last_decision is not None else None
    if job.spec.pipeline == t.Pipeline.RLVR:
        safe = weight_version is not None and recorded is not None and weight_version > recorded
    else:
        safe = True
    if weight_version is None:
        weight_version = recorded  # rank 0 not scraped this round: the boundary seen last still counts
    aw = acceptance_window(window)
    if state.schedule is not None and state.schedule.engine == "plain" and trainer_agreement:
        aw = AcceptanceWindow(unconditional_from_depth_accuracy(trainer_agreement), 0.0, "trainer", aw.batch_size)
    common: dict[str, Any] = {
        "calibration": calibration_summary(cal),
        "measured_gain": _r(measured_gain(window, cal)),
        "smoothed_per_position": old.smoothed_per_position if old is not None else None,
    }
    if state.schedule is None and (not aw.per_position or not aw.drafts >= config.min_drafts):
        reason = (
            f"waiting for evidence: {aw.drafts:g} drafts in the window < minDrafts {config.min_drafts}; "
            f"drafting the maximum k={spec.max_k} until then"
        )
        decision = t.SpeculationDecision(time=_iso(now), reason=reason, weight_version=weight_version)
        return base.model_copy(update={**common, "last_decision": decision}), False
    d = decide(
        state,
        aw,
        cal,
        now_s=now.timestamp(),
        at_safe_point=safe,
        max_k=spec.max_k,
        max_batch=MAX_BATCH,
        config=config,
    )
    reason = d.reason
    if job.spec.pipeline == t.Pipeline.RLVR and not safe:
        reason += f" (rlvr: the next safe point is a weight version after {weight_version})"
    decision = t.SpeculationDecision(
        time=_iso(now),
        reason=reason,
        # before the first schedule the controller's "current" gain is a placeholder (1.0): left out
        predicted_gain_current=_r(d.predicted_gain_current) if state.schedule is not None else None,
        predicted_gain_new=_r(d.predicted_gain_new),
        weight_version=weight_version,
    )
    smoothed = [round(x, ACCEPTANCE_DIGITS) for x in d.state.smoothed] if d.state.smoothed else None
    common.update(last_decision=decision, smoothed_per_position=smoothed)
    if d.apply:
        new = t.SpeculationStatus(
            engine=t.SpeculationEngine(d.schedule.engine),
            schedule=_ranges(d.schedule),
            description=d.schedule.describe(),
            since=_iso(now),
            predicted_gain=_r(d.predicted_gain_new),
            **common,
        )
        return new, True
    running_gain = _r(d.predicted_gain_current) if state.schedule is not None else None
    return base.model_copy(update={**common, "predicted_gain": running_gain}), False


# ------------------------------------------------------------------------------------- status and Events


def condition(report: SpeculationReport) -> tuple[t.ConditionType, Literal["True", "False"], str, str]:
    """The ``SpeculationCalibrated`` condition as (type, status, reason, message)."""
    status: Literal["True", "False"] = "True" if report.calibrated else "False"
    return (t.ConditionType.SPECULATION_CALIBRATED, status, report.reason, report.message)


def events(old: t.MTPTrainingJobStatus | None, new: t.MTPTrainingJobStatus) -> list[Event]:
    """A new schedule (Normal ``SpeculationScheduleChanged``), a calibration that cannot be used (Warning)."""
    out: list[Event] = []
    spec_old = old.speculation if old is not None else None
    spec_new = new.speculation
    if spec_new is not None and spec_new.since is not None and (spec_old is None or spec_old.since != spec_new.since):
        last = spec_new.last_decision
        gain = f"predicted gain {spec_new.predicted_gain:.2f}x" if spec_new.predicted_gain is not None else ""
        if last is not None and last.predicted_gain_current is not None:
            gain += f" (the previous schedule: {last.predicted_gain_current:.2f}x)"
        why = last.reason if last is not None else ""
        out.append(("Normal", t.ConditionReason.SPECULATION_SCHEDULE_CHANGED, f"{spec_new.description}; {gain}; {why}"))
    kind = t.ConditionType.SPECULATION_CALIBRATED
    cond_old = next((c for c in (old.conditions if old is not None else []) if c.type == kind), None)
    cond_new = next((c for c in new.conditions if c.type == kind), None)
    if (
        cond_new is not None
        and cond_new.status == "False"
        and (cond_old is None or cond_old.status != "False" or cond_old.reason != cond_new.reason)
    ):
        out.append(("Warning", cond_new.reason, cond_new.message))
    return out


# ------------------------------------------------------------------------------------- the round


class SpeculationRound:
    """The I/O half: one decision point per job and scrape round; keeps the newest status per job."""

    def __init__(
        self, store: LatestMetrics, *, min_interval_s: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._store = store
        self._min_interval_s = min_interval_s
        self._clock = clock
        self._latest: dict[JobKey, tuple[SpeculationReport, float]] = {}

    def forget(self, key: JobKey) -> None:
        self._latest.pop(key, None)

    async def round(
        self,
        key: JobKey,
        job: t.MTPTrainingJob,
        status: t.MTPTrainingJobStatus | None,
        kube: Kube,
        now: datetime.datetime,
    ) -> bool:
        """One decision point; True when the store got a new report (the caller then reconciles the job)."""
        if not is_auto(job):
            self.forget(key)  # a job moved off auto starts afresh if it comes back
            return False
        if job.spec.run_policy.suspend:
            return False
        if status is not None and status.state in t.TERMINAL_STATES:
            return False
        kept = self._latest.get(key)
        old = kept[0].status if kept is not None else status.speculation if status is not None else None
        metrics: JobMetrics = self._store.get(*key)
        cal, problem = await read_calibration(kube, job)
        if cal is None:
            assert problem is not None
            keep = old if old is not None and old.since is not None else initial_status(job, None)
            report = SpeculationReport(keep.model_copy(update={"calibration": None}), False, *problem)
            applied = False
        else:
            rl = metrics.rl or (status.rl if status is not None else None)
            trainer = metrics.trainer or (status.trainer if status is not None else None)
            new, applied = next_status(
                job,
                old,
                metrics.window,
                cal,
                now=now,
                weight_version=rl.weight_version if rl is not None else None,
                trainer_agreement=trainer.mtp_agreement if trainer is not None else None,
            )
            summary = (
                f"{cal.model} on {cal.hardware} ({cal.dtype}), batch sizes {list(cal.batch_sizes)}, k <= {cal.max_k}"
            )
            report = SpeculationReport(new, True, t.ConditionReason.CALIBRATED, summary)
        return self._keep(key, report, applied, kept)

    def _keep(
        self, key: JobKey, report: SpeculationReport, applied: bool, kept: tuple[SpeculationReport, float] | None
    ) -> bool:
        now = self._clock()
        due = (
            kept is None
            or applied
            or (kept[0].calibrated, kept[0].reason, kept[0].message)
            != (report.calibrated, report.reason, report.message)
            or now - kept[1] >= self._min_interval_s
        )
        if due:
            self._store.put_speculation(*key, report)
            self._latest[key] = (report, now)
        else:
            assert kept is not None
            self._latest[key] = (report, kept[1])
        return due
