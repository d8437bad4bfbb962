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


CASES = [
    # id, job, observed, metrics, seconds after T0, state, (condition, reason)
    ("pending", job(), children(missing="Deployment"), JobMetrics(), 0, "Pending", ("Created", "ChildrenCreated")),
    ("created", job(), children(), JobMetrics(), 0, "Created", ("Running", "PodsNotReady")),
    ("running", job(), children(1, 1), JobMetrics(), 0, "Running", ("Running", "PodsReady")),
    ("rollout-not-ready", job(), children(1, 0), JobMetrics(), 0, "Created", ("Running", "PodsNotReady")),
    ("suspended", job(suspend=True), children(1, 1), JobMetrics(), 0, "Suspended", ("Suspended", "Suspended")),
    ("backoff", job(backoffLimit=1), with_restarts(2), JobMetrics(), 0, "Failed", ("Failed", "BackoffLimitExceeded")),
    ("within-backoff", job(backoffLimit=2), with_restarts(2), JobMetrics(), 0, "Created", ("Running", "PodsNotReady")),
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
        ("Running", "PodsNotReady"),
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
        "succeeded",
        job(),
        children(1, 1),
        JobMetrics(trainer=t.TrainerStatus(step=200)),
        0,
        "Succeeded",
        ("Succeeded", "TrainingCompleted"),
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
    done = compute_status(job(), None, children(1, 1), JobMetrics(trainer=t.TrainerStatus(step=200)), T0, generation=1)
    later = compute_status(
        job(suspend=True),
        done,
        children(missing="StatefulSet"),
        JobMetrics(rollout=t.RolloutStatus(acceptance_rate=0.123456, per_position_acceptance=[0.91111, 0.5])),
        T0 + datetime.timedelta(days=1),
        generation=5,
    )
    assert later.state == "Succeeded" and later.conditions == done.conditions
    assert later.completion_time == done.completion_time
    assert later.rollout is not None and later.rollout.acceptance_rate == 0.123
    assert later.rollout.per_position_acceptance == [0.911, 0.5]
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
    done = compute_status(
        rlvr_job(), None, rlvr_children(), JobMetrics(trainer=t.TrainerStatus(step=200), rl=RL), T0, generation=1
    )
    assert done.state == "Succeeded" and done.rl is not None and done.rl.step == 7
    last = RL.model_copy(update={"step": 200, "reward_mean": 0.9})
    later = compute_status(rlvr_job(), done, rlvr_children(), JobMetrics(rl=last), T0, generation=1)
    assert later.state == "Succeeded" and later.rl is not None
    assert (later.rl.step, later.rl.reward_mean) == (200, 0.9)
