"""Status as a pure function: a table of (job, observed, metrics, time) -> state and reason."""

from __future__ import annotations

import datetime
from typing import Any

import pytest

from mtp_api import types as t
from mtp_operator.metrics_store import JobMetrics
from mtp_operator.observed import ChildState, Observed, PodState, observed_from, summarize_pod
from mtp_operator.status import compute_status
from tests.operator.conftest import job_manifest

T0 = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)


def job(**policy: Any) -> t.MTPTrainingJob:
    body = job_manifest()
    body["spec"]["runPolicy"] = policy
    return t.MTPTrainingJob.model_validate(body)


def children(trainer_ready: int = 0, rollout_ready: int = 0, missing: str | None = None) -> Observed:
    kids = [
        ChildState("ConfigMap", "demo-config", "1", "h"),
        ChildState("Service", "demo-trainer", "2", "h"),
        ChildState("StatefulSet", "demo-trainer", "3", "h", 1, trainer_ready),
        ChildState("Service", "demo-rollout", "4", "h"),
        ChildState("Deployment", "demo-rollout", "5", "h", 1, rollout_ready),
    ]
    return observed_from([k for k in kids if k.kind != missing], [])


def with_restarts(n: int, exit_code: int | None = None, component: str = "trainer") -> Observed:
    codes = (("trainer", exit_code),) if exit_code is not None else ()
    pod = PodState(f"demo-{component}-0", component, False, n, False, last_exit_codes=codes)
    return Observed(children().children, (pod,))


def with_pod(ready: int = 1, **pod: Any) -> Observed:
    """All children with ``ready`` trainer replicas, and trainer pod 0 as given (attempt 0)."""
    fields: dict[str, Any] = {"ready": True, "restarts": 0, "failed": False} | pod
    return Observed(children(ready, 1).children, (PodState("demo-trainer-0", "trainer", **fields),))


DONE = 'mtp-complete {"export": "/ckpt/hf", "step": 200}'


CASES = [
    # id, job, observed, metrics, seconds after T0, state, (condition, reason)
    ("pending", job(), children(missing="Deployment"), JobMetrics(), 0, "Pending", ("Created", "ChildrenCreated")),
    ("created", job(), children(), JobMetrics(), 0, "Created", ("Running", "PodsNotReady")),
    ("running", job(), children(1, 1), JobMetrics(), 0, "Running", ("Running", "PodsReady")),
    ("rollout-not-ready", job(), children(1, 0), JobMetrics(), 0, "Created", ("Running", "PodsNotReady")),
    ("suspended", job(suspend=True), children(1, 1), JobMetrics(), 0, "Suspended", ("Suspended", "Suspended")),
    # a crash of attempt 0 is restart 1 of the group: more than backoffLimit 0, within 2
    (
        "backoff",
        job(backoffLimit=0),
        with_restarts(3, 1),
        JobMetrics(),
        0,
        "Failed",
        ("Failed", "BackoffLimitExceeded"),
    ),
    (
        "within-backoff",
        job(backoffLimit=2),
        with_restarts(3, 1),
        JobMetrics(),
        0,
        "Created",
        ("Running", "TrainerFailed"),
    ),
    # container restarts alone (an exit 0 of a finished rank, say) are no incident
    (
        "restarts-exit-0",
        job(backoffLimit=0),
        with_restarts(3, 0),
        JobMetrics(),
        0,
        "Created",
        ("Running", "PodsNotReady"),
    ),
    ("evicted", job(), with_pod(failed=True, disruption="Evicted"), JobMetrics(), 0, "Created", ("Running", "Evicted")),
    (
        "node-lost",
        job(),
        with_pod(deletion_timestamp="2026-01-01T00:00:00Z", disruption="DeletionByTaintManager"),
        JobMetrics(),
        0,
        "Created",
        ("Running", "NodeLost"),
    ),
    (
        "preempted",
        job(),
        with_pod(disruption="PreemptionByScheduler", deletion_timestamp="2026-01-01T00:00:00Z"),
        JobMetrics(),
        0,
        "Created",
        ("Running", "Evicted"),
    ),
    (
        "bad-input-exit-2",
        job(backoffLimit=5),
        with_restarts(1, 2),
        JobMetrics(),
        0,
        "Failed",
        ("Failed", "InvalidSpec"),
    ),
    (
        "bad-input-beats-backoff",
        job(backoffLimit=0),
        with_restarts(3, 2),
        JobMetrics(),
        0,
        "Failed",
        ("Failed", "InvalidSpec"),
    ),
    (
        "crash-exit-1-retries",
        job(backoffLimit=5),
        with_restarts(1, 1),
        JobMetrics(),
        0,
        "Created",
        ("Running", "TrainerFailed"),
    ),
    (
        "rollout-exit-2-ignored",
        job(),
        with_restarts(0, 2, "rollout"),
        JobMetrics(),
        0,
        "Created",
        ("Running", "PodsNotReady"),
    ),
    (
        "deadline",
        job(activeDeadlineSeconds=60),
        children(1, 1),
        JobMetrics(),
        61,
        "Failed",
        ("Failed", "DeadlineExceeded"),
    ),
    (
        "deadline-not-while-suspended",
        job(activeDeadlineSeconds=60, suspend=True),
        children(1, 1),
        JobMetrics(),
        61,
        "Suspended",
        ("Suspended", "Suspended"),
    ),
    (
        "succeeded",
        job(),
        with_pod(last_exit_codes=(("trainer", 0),), completion=DONE.removeprefix("mtp-complete ")),
        JobMetrics(),
        0,
        "Succeeded",
        ("Succeeded", "TrainingCompleted"),
    ),
    (
        "succeeded-beats-deadline",
        job(activeDeadlineSeconds=60),
        with_pod(last_exit_codes=(("trainer", 0),), completion="{}"),
        JobMetrics(),
        61,
        "Succeeded",
        ("Succeeded", "TrainingCompleted"),
    ),
    (
        "metric-never-decides",
        job(),
        children(1, 1),
        JobMetrics(trainer=t.TrainerStatus(step=200)),
        0,
        "Running",
        ("Running", "PodsReady"),
    ),
    (
        "exit-0-without-marker-is-not-success",
        job(),
        with_pod(last_exit_codes=(("trainer", 0),)),
        JobMetrics(trainer=t.TrainerStatus(step=200)),
        0,
        "Running",
        ("Running", "PodsReady"),
    ),
    (
        "not-yet",
        job(),
        children(1, 1),
        JobMetrics(trainer=t.TrainerStatus(step=199)),
        0,
        "Running",
        ("Running", "PodsReady"),
    ),
]


@pytest.mark.parametrize(("case", "j", "obs", "m", "dt", "state", "cond"), CASES, ids=[c[0] for c in CASES])
def test_verdicts(
    case: str, j: t.MTPTrainingJob, obs: Observed, m: JobMetrics, dt: int, state: str, cond: tuple[str, str]
) -> None:
    start = compute_status(j, None, obs, m, T0, generation=1)  # the first reconcile sets startTime
    st = compute_status(j, start, obs, m, T0 + datetime.timedelta(seconds=dt), generation=1)
    assert st.state == state
    assert {str(c.type): c.reason for c in st.conditions}[cond[0]] == cond[1]
    assert st.observed_generation == 1
    assert (st.completion_time is not None) == (state in ("Succeeded", "Failed"))


def test_unchanged_inputs_give_an_identical_status() -> None:
    first = compute_status(job(), None, children(1, 1), JobMetrics(), T0, generation=1)
    later = compute_status(job(), first, children(1, 1), JobMetrics(), T0 + datetime.timedelta(hours=1), generation=1)
    assert later.wire() == first.wire()


def test_transition_time_moves_only_on_change() -> None:
    def times(st: t.MTPTrainingJobStatus) -> dict[str, tuple[str, str | None]]:
        return {str(c.type): (c.status, c.last_transition_time) for c in st.conditions}

    a = compute_status(job(), None, children(0, 0), JobMetrics(), T0, generation=1)
    assert times(a) == {"Created": ("True", "2026-01-01T00:00:00Z"), "Running": ("False", "2026-01-01T00:00:00Z")}
    # the trainer gets ready, the rollout not yet: Running stays False (only its message changes), no time moves
    b = compute_status(job(), a, children(1, 0), JobMetrics(), T0 + datetime.timedelta(minutes=5), generation=1)
    assert [c.message for c in b.conditions if c.type == "Running"] == ["trainer 1/1 ready"]
    assert times(b) == times(a)
    # all ready: Running turns True, and only Running's time moves
    c = compute_status(job(), b, children(1, 1), JobMetrics(), T0 + datetime.timedelta(minutes=10), generation=1)
    assert times(c) == {"Created": ("True", "2026-01-01T00:00:00Z"), "Running": ("True", "2026-01-01T00:10:00Z")}


def test_terminal_state_sticks_while_numbers_move() -> None:
    finished = with_pod(last_exit_codes=(("trainer", 0),), completion="{}")
    done = compute_status(job(), None, finished, JobMetrics(trainer=t.TrainerStatus(step=200)), T0, generation=1)
    later = compute_status(
        job(suspend=True),
        done,
        children(missing="StatefulSet"),
        # As the collector rounded them (mtp_rollout.metrics.status.rollout_status, the one place that rounds).
        JobMetrics(rollout=t.RolloutStatus(acceptance_rate=0.12, per_position_acceptance=[0.91, 0.5])),
        T0 + datetime.timedelta(days=1),
        generation=5,
    )
    assert later.state == "Succeeded" and later.conditions == done.conditions
    assert later.completion_time == done.completion_time
    assert later.rollout is not None and later.rollout.acceptance_rate == 0.12
    assert later.rollout.per_position_acceptance == [0.91, 0.5]
    assert later.trainer is not None and later.trainer.step == 200  # kept from the last known value


def test_bad_input_exit_points_at_the_trainer_log() -> None:
    st = compute_status(job(), None, with_restarts(1, 2), JobMetrics(), T0, generation=1)
    failed = {str(c.type): c for c in st.conditions}["Failed"]
    assert failed.reason == "InvalidSpec" and "kubectl logs -n team-a demo-trainer-0 -c trainer" in failed.message


SUMMARY_CASES = [
    # id, containerStatuses, expected last_exit_codes
    ("never-terminated", [{"name": "trainer", "restartCount": 0, "state": {"running": {}}}], ()),
    (
        "restarted-after-exit-2",
        [
            {
                "name": "trainer",
                "restartCount": 1,
                "state": {"running": {}},
                "lastState": {"terminated": {"exitCode": 2}},
            }
        ],
        (("trainer", 2),),
    ),
    (
        "terminated-now-wins",
        [
            {
                "name": "trainer",
                "restartCount": 1,
                "state": {"terminated": {"exitCode": 0}},
                "lastState": {"terminated": {"exitCode": 2}},
            }
        ],
        (("trainer", 0),),
    ),
    (
        "waiting-in-backoff",
        [{"name": "trainer", "state": {"waiting": {}}, "lastState": {"terminated": {"exitCode": 1}}}],
        (("trainer", 1),),
    ),
]


@pytest.mark.parametrize(("case", "statuses", "want"), SUMMARY_CASES, ids=[c[0] for c in SUMMARY_CASES])
def test_summarize_pod_last_exit_codes(case: str, statuses: list[dict[str, Any]], want: tuple) -> None:
    body = {
        "metadata": {"name": "demo-trainer-0", "labels": {"app.kubernetes.io/component": "trainer"}},
        "status": {"phase": "Running", "containerStatuses": statuses},
    }
    assert summarize_pod(body).last_exit_codes == want


def test_invalid_spec_fails_with_reason() -> None:
    st = compute_status(job(), None, Observed(), JobMetrics(), T0, generation=1, invalid="bad volume")
    assert (
        st.state == "Failed" and st.conditions[0].reason == "InvalidSpec" and st.conditions[0].message == "bad volume"
    )


def rlvr_job() -> t.MTPTrainingJob:
    body = job_manifest()
    body["spec"]["pipeline"] = "rlvr"
    body["spec"]["reward"] = {}
    return t.MTPTrainingJob.model_validate(body)


def rlvr_children(trainer_ready: int = 1, rollout_ready: int = 1) -> Observed:
    peers = ChildState("Service", "demo-rollout-peers", "6", "h")
    return observed_from([*children(trainer_ready, rollout_ready).children.values(), peers], [])


RL = t.RLStatus(
    step=7, reward_mean=0.43754, accuracy=0.40625, acceptance_rate=0.812345, mean_acceptance_length=2.624682,
    weight_version=7,
)  # fmt: skip


def test_rl_block_is_rounded_once_and_kept_while_rank_0_is_not_scraped() -> None:
    st = compute_status(rlvr_job(), None, rlvr_children(), JobMetrics(rl=RL), T0, generation=1)
    assert st.state == "Running"
    assert st.wire()["rl"] == {
        "step": 7, "rewardMean": 0.438, "accuracy": 0.406, "acceptanceRate": 0.812, "meanAcceptanceLength": 2.625,
        "weightVersion": 7,
    }  # fmt: skip
    later = compute_status(
        rlvr_job(), st, rlvr_children(), JobMetrics(), T0 + datetime.timedelta(minutes=1), generation=1
    )
    assert later.rl == st.rl


def test_rlvr_is_created_only_once_the_peers_service_exists() -> None:
    without = compute_status(rlvr_job(), None, children(0, 0), JobMetrics(), T0, generation=1)
    assert (without.state, without.rl) == ("Pending", None)
    with_peers = compute_status(rlvr_job(), None, rlvr_children(0, 0), JobMetrics(), T0, generation=1)
    assert with_peers.state == "Created"  # the same children plus the peers Service: created, and not before


def test_sft_has_no_rl_block() -> None:
    st = compute_status(job(), None, children(1, 1), JobMetrics(rl=RL), T0, generation=1)
    assert st.rl is None and "rl" not in st.wire()


def test_rl_block_moves_after_success() -> None:
    rank0 = PodState("demo-trainer-0", "trainer", False, 0, False, last_exit_codes=(("trainer", 0),), completion="{}")
    finished = Observed(rlvr_children().children, (rank0,))
    done = compute_status(
        rlvr_job(), None, finished, JobMetrics(trainer=t.TrainerStatus(step=200), rl=RL), T0, generation=1
    )
    assert done.state == "Succeeded" and done.rl is not None and done.rl.step == 7
    last = RL.model_copy(update={"step": 200, "reward_mean": 0.9})
    later = compute_status(rlvr_job(), done, rlvr_children(), JobMetrics(rl=last), T0, generation=1)
    assert later.state == "Succeeded" and later.rl is not None
    assert (later.rl.step, later.rl.reward_mean) == (200, 0.9)


def test_summarize_pod_reads_attempt_completion_and_disruption() -> None:
    def pod(terminated: dict[str, Any], **meta: Any) -> PodState:
        return summarize_pod(
            {
                "metadata": {
                    "name": "demo-trainer-0",
                    "labels": {"app.kubernetes.io/component": "trainer", "mtp.io/restart-attempt": "3"},
                    **meta,
                },
                "status": {
                    "phase": "Running",
                    "conditions": [{"type": "DisruptionTarget", "status": "True", "reason": "DeletionByTaintManager"}],
                    "containerStatuses": [{"name": "trainer", "state": {"terminated": terminated}}],
                },
            }
        )

    done = pod({"exitCode": 0, "message": DONE}, deletionTimestamp="2026-01-01T00:00:00Z")
    assert (done.attempt, done.completion) == (3, '{"export": "/ckpt/hf", "step": 200}')
    assert (done.disruption, done.node_lost, done.deletion_timestamp) == (
        "DeletionByTaintManager",
        True,
        "2026-01-01T00:00:00Z",
    )
    assert done.stuck_terminating(T0)  # on a lost node: stuck at once
    assert pod({"exitCode": 1, "message": DONE}).completion is None  # the message alone is not success
    assert pod({"exitCode": 0}).completion is None  # nor is exit 0 alone


def test_a_pod_past_its_grace_period_is_stuck() -> None:
    pod = PodState(
        "p", "trainer", False, 0, False, deletion_timestamp="2026-01-01T00:00:00Z", deletion_grace_seconds=30
    )
    assert not pod.stuck_terminating(T0 + datetime.timedelta(seconds=89))
    assert pod.stuck_terminating(T0 + datetime.timedelta(seconds=90))  # grace 30 + 60


def test_an_incident_counts_once_and_pods_of_older_attempts_are_ignored() -> None:
    crashed = with_restarts(4, 1)  # attempt 0
    a = compute_status(job(backoffLimit=3), None, crashed, JobMetrics(), T0, generation=1)
    assert a.restarts == 1
    b = compute_status(job(backoffLimit=3), a, crashed, JobMetrics(), T0 + datetime.timedelta(minutes=1), generation=1)
    assert b.restarts == 1 and b.state == "Created"  # the same crash, seen again: no second restart
    running = {str(c.type): c for c in b.conditions}["Running"]
    assert (running.reason, running.message) == (
        "TrainerFailed",
        "restarting the trainer group (restart 1 of backoffLimit 3): pod demo-trainer-0: the trainer exited with status 1",
    )
    new_crash = Observed(
        children().children,
        (PodState("demo-trainer-0", "trainer", False, 1, False, last_exit_codes=(("trainer", 137),), attempt=1),),
    )
    c = compute_status(
        job(backoffLimit=3), b, new_crash, JobMetrics(), T0 + datetime.timedelta(minutes=2), generation=1
    )
    assert c.restarts == 2


def test_stall_watchdog_fires_only_after_stall_seconds_without_progress() -> None:
    j = job(stallSeconds=100)

    def at(old: t.MTPTrainingJobStatus | None, step: int, seconds: int) -> t.MTPTrainingJobStatus:
        m = JobMetrics(trainer=t.TrainerStatus(step=step))
        return compute_status(j, old, children(1, 1), m, T0 + datetime.timedelta(seconds=seconds), generation=1)

    a = at(None, 10, 0)
    assert (a.state, a.last_progress_time) == ("Running", "2026-01-01T00:00:00Z")
    b = at(a, 20, 50)  # the step moved: the clock restarts
    assert (b.state, b.last_progress_time) == ("Running", "2026-01-01T00:00:50Z")
    c = at(b, 20, 149)
    assert (c.state, c.restarts) == ("Running", 0)
    d = at(c, 20, 150)
    assert (d.state, d.restarts, d.last_progress_time) == ("Created", 1, None)
    assert {str(x.type): x.reason for x in d.conditions}["Running"] == "Stalled"


def test_suspend_resets_the_deadline_clock() -> None:
    def at(old: t.MTPTrainingJobStatus | None, seconds: int, **policy: Any) -> t.MTPTrainingJobStatus:
        j = job(activeDeadlineSeconds=100, **policy)
        return compute_status(
            j, old, children(1, 1), JobMetrics(), T0 + datetime.timedelta(seconds=seconds), generation=1
        )

    a = at(None, 0)
    s = at(a, 90, suspend=True)
    assert (s.state, s.start_time) == ("Suspended", None)
    later = at(s, 1000, suspend=True)
    assert later.state == "Suspended"  # a suspended (queued) job never fails its deadline
    r = at(later, 1000)
    assert (r.state, r.start_time) == ("Running", "2026-01-01T00:16:40Z")
    assert at(r, 1099).state == "Running"
    assert at(r, 1100).state == "Failed"


def test_pods_deleted_by_a_suspension_are_no_incident_after_the_resume() -> None:
    j = job()
    first = compute_status(j, None, children(1, 1), JobMetrics(), T0, generation=1)
    held = compute_status(
        job(suspend=True), first, children(0, 0), JobMetrics(), T0 + datetime.timedelta(minutes=1), generation=2
    )
    # resumed while rank 0 of the suspension is still terminating (SIGTERM: it saved and exits 143)
    going = PodState(
        "demo-trainer-0", "trainer", False, 0, False, last_exit_codes=(("trainer", 143),),
        deletion_timestamp="2026-01-01T00:01:00Z",
    )  # fmt: skip
    obs = Observed(children(0, 0).children, (going,))
    resumed = compute_status(j, held, obs, JobMetrics(), T0 + datetime.timedelta(minutes=2), generation=3)
    assert (resumed.state, resumed.restarts) == ("Created", 0)
    later = compute_status(j, resumed, obs, JobMetrics(), T0 + datetime.timedelta(minutes=3), generation=3)
    assert later.restarts == 0
    # a pod deleted after the resume is an incident again
    evicted = PodState("demo-trainer-0", "trainer", False, 0, False, deletion_timestamp="2026-01-01T00:02:30Z")
    hit = compute_status(
        j,
        later,
        Observed(children(0, 0).children, (evicted,)),
        JobMetrics(),
        T0 + datetime.timedelta(minutes=4),
        generation=3,
    )
    assert hit.restarts == 1
