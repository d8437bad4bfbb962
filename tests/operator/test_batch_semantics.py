"""Batch semantics through the real operator and the test API server: what is a success, a failure, a restart.

Each scenario plays the parts that a cluster would: the tests write pod states as the kubelet and the
node lifecycle controller would, and create the replacement pods of a restarted group as the StatefulSet
controller would (the test API server runs no controllers). Every expectation is written by hand.
"""

from __future__ import annotations

import datetime
import json
from typing import Any

import pytest

from mtp_api import types as t
from mtp_api import validation
from mtp_operator import handlers
from mtp_operator import reconcile as reconcile_module
from tests.apiserver.harness import wait_for
from tests.operator.backends import Backend

NAME = "demo"
STS = f"{NAME}-trainer"
DONE = 'mtp-complete {"export": "/ckpt/hf", "step": 200}'
T0 = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)

pytestmark = pytest.mark.usefixtures("kmock_only")


@pytest.fixture
def kmock_only(backend: Backend) -> None:
    if backend.real:
        pytest.skip("pod states and controllers are played by the test; a cluster has its own")


def status(backend: Backend) -> dict[str, Any]:
    return dict((backend.get(t.PLURAL, NAME) or {}).get("status") or {})


def conditions(st: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["type"]: c for c in st.get("conditions", [])}


def wait_status(backend: Backend, pred: Any) -> dict[str, Any]:
    return wait_for(lambda: (st := status(backend)) and pred(st) and st)


def events(backend: Backend) -> list[tuple[str, str]]:
    """(type, reason) of the Events about the job, oldest first."""
    found = [e for e in backend.list("events") if (e.get("involvedObject") or {}).get("name") == NAME]
    return [(e.get("type", ""), e.get("reason", "")) for e in found]


def pod(
    index: int,
    attempt: int = 0,
    *,
    ready: bool = True,
    terminated: dict[str, Any] | None = None,
    restarts: int = 0,
    **extra: Any,
) -> dict[str, Any]:
    """A trainer pod as the StatefulSet controller makes it and the kubelet reports it."""
    container: dict[str, Any] = {"name": "trainer", "restartCount": restarts, "state": {"running": {}}}
    if terminated is not None:
        container["lastState"] = {"terminated": terminated}
    body: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": f"{STS}-{index}",
            "labels": {
                "app.kubernetes.io/managed-by": "mtp-operator",
                "mtp.io/job-name": NAME,
                "app.kubernetes.io/component": "trainer",
                "mtp.io/restart-attempt": str(attempt),
            },
        },
        "spec": {"containers": [{"name": "trainer", "image": "x"}]},
        "status": {
            "phase": "Running",
            "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
            "containerStatuses": [container],
        },
    }
    for key, value in extra.items():
        section, field = key.split("__")
        body[section][field] = value
    return body


def start_group(backend: Backend, replicas: int, attempt: int = 0, **extra: Any) -> None:
    """The StatefulSet controller and the kubelet: every rank of ``attempt`` running and ready."""
    for i in range(replicas):
        backend.apply("pods", pod(i, attempt, **(extra if i == replicas - 1 else {})))
    wait_for(lambda: backend.get("deployments", f"{NAME}-rollout"))  # the last child the operator creates
    backend.patch("statefulsets", STS, {"status": {"readyReplicas": replicas}}, "status")
    backend.patch("deployments", f"{NAME}-rollout", {"status": {"readyReplicas": 1}}, "status")


def trainer_pods(backend: Backend) -> dict[str, str]:
    """name -> restart-attempt label of the trainer pods that exist."""
    return {
        p["metadata"]["name"]: p["metadata"]["labels"].get("mtp.io/restart-attempt", "")
        for p in backend.list("pods")
        if p["metadata"]["labels"].get("app.kubernetes.io/component") == "trainer"
    }


def template_attempt(backend: Backend) -> str:
    sts = backend.get("statefulsets", STS) or {}
    return str(sts["spec"]["template"]["metadata"]["labels"]["mtp.io/restart-attempt"])


def lose_readiness(backend: Backend, ready: int = 0) -> None:
    """The StatefulSet controller reports fewer ready ranks (a crashed or going pod is not ready)."""
    backend.patch("statefulsets", STS, {"status": {"readyReplicas": ready}}, "status")


def test_rank_crash_restarts_the_group_once_then_succeeds_only_after_the_export(
    backend: Backend, job: dict[str, Any]
) -> None:
    job["spec"]["trainer"]["replicas"] = 2
    job["spec"]["trainer"]["hyperparameters"]["globalBatchSize"] = 16  # a multiple of 2 data-parallel ranks
    job["spec"]["runPolicy"] = {"backoffLimit": 1}
    backend.apply(t.PLURAL, job)
    with backend.operator() as op:
        wait_for(lambda: backend.get("statefulsets", STS))
        sts = backend.get("statefulsets", STS)
        assert sts is not None and sts["spec"]["updateStrategy"] == {"type": "OnDelete"}
        assert template_attempt(backend) == "0"
        start_group(backend, 2)
        wait_status(backend, lambda st: st.get("state") == "Running")

        # rank 0's step gauge reaches maxSteps: a metric never decides success
        op.runtime.metrics.put_trainer(backend.namespace, NAME, t.TrainerStatus(step=200))
        backend.patch(t.PLURAL, NAME, {"metadata": {"annotations": {"poke": "1"}}})
        wait_status(backend, lambda st: (st.get("trainer") or {}).get("step") == 200)
        assert status(backend)["state"] == "Running"

        # rank 1 crashes (the kubelet restarts its container in place): the whole group restarts once
        lose_readiness(backend, 1)
        backend.apply("pods", pod(1, restarts=1, terminated={"exitCode": 1, "reason": "Error"}))
        st = wait_status(backend, lambda st: st.get("restarts") == 1)
        assert conditions(st)["Running"]["status"] == "False"
        assert conditions(st)["Running"]["reason"] == "TrainerFailed"
        assert conditions(st)["Running"]["message"] == (
            f"restarting the trainer group (restart 1 of backoffLimit 1): pod {STS}-1: the trainer exited with status 1"
        )
        wait_for(lambda: trainer_pods(backend) == {})  # every rank deleted, not only the one that crashed
        wait_for(lambda: template_attempt(backend) == "1")
        wait_for(lambda: ("Warning", "TrainerFailed") in events(backend))

        # the StatefulSet controller recreates both ranks from the new template; they resume from the checkpoint
        start_group(backend, 2, attempt=1)
        st = wait_status(backend, lambda st: st.get("state") == "Running")
        assert st["restarts"] == 1  # one incident, one restart, however many pod events it made

        # rank 1 finishes first and exits 0 (no message): neither success nor a failure
        backend.apply("pods", pod(1, 1, restarts=1, terminated={"exitCode": 0, "reason": "Completed"}))
        backend.patch(t.PLURAL, NAME, {"metadata": {"annotations": {"poke": "2"}}})
        wait_for(lambda: (backend.get(t.PLURAL, NAME) or {})["metadata"]["annotations"].get("poke") == "2")
        wait_for(lambda: backend.get("pods", f"{STS}-1") is not None)
        st = status(backend)
        assert (st["state"], st["restarts"]) == ("Running", 1)

        # rank 0 writes the marker after the export, reports it in its termination message and exits 0
        backend.apply("pods", pod(0, 1, restarts=1, terminated={"exitCode": 0, "reason": "Completed", "message": DONE}))
        st = wait_status(backend, lambda st: st.get("state") == "Succeeded")
        assert conditions(st)["Succeeded"]["reason"] == "TrainingCompleted"
        assert conditions(st)["Succeeded"]["message"] == (
            'rank 0 made the final checkpoint and export durable and exited 0: {"export": "/ckpt/hf", "step": 200}'
        )
        assert st["restarts"] == 1
        wait_for(lambda: (backend.get("statefulsets", STS) or {})["spec"]["replicas"] == 0)
        wait_for(lambda: ("Normal", "TrainingCompleted") in events(backend))


def test_a_second_incident_beyond_backoff_limit_fails_the_job(backend: Backend, job: dict[str, Any]) -> None:
    job["spec"]["runPolicy"] = {"backoffLimit": 1}
    backend.apply(t.PLURAL, job)
    with backend.operator():
        wait_for(lambda: backend.get("statefulsets", STS))
        start_group(backend, 1)
        lose_readiness(backend)
        backend.apply("pods", pod(0, restarts=5, terminated={"exitCode": 1}))  # five container restarts, one incident
        wait_status(backend, lambda st: st.get("restarts") == 1 and st.get("state") != "Failed")
        start_group(backend, 1, attempt=1)
        wait_status(backend, lambda st: st.get("state") == "Running")
        lose_readiness(backend)
        backend.apply("pods", pod(0, 1, restarts=1, terminated={"exitCode": 137, "reason": "OOMKilled"}))
        st = wait_status(backend, lambda st: st.get("state") == "Failed")
        assert st["restarts"] == 2
        assert conditions(st)["Failed"]["reason"] == "BackoffLimitExceeded"
        assert conditions(st)["Failed"]["message"] == (
            "the trainer group needed restart 2, more than backoffLimit 1; last: TrainerFailed: "
            f"pod {STS}-0: the trainer exited with status 137"
        )
        wait_for(lambda: ("Warning", "BackoffLimitExceeded") in events(backend))
        wait_for(lambda: (backend.get("statefulsets", STS) or {})["spec"]["replicas"] == 0)


def test_eviction_restarts_the_group(backend: Backend, job: dict[str, Any]) -> None:
    backend.apply(t.PLURAL, job)
    with backend.operator():
        wait_for(lambda: backend.get("statefulsets", STS))
        start_group(backend, 1)
        wait_status(backend, lambda st: st.get("state") == "Running")
        lose_readiness(backend)
        evicted = pod(0, ready=False)
        evicted["status"] |= {"phase": "Failed", "reason": "Evicted", "message": "The node was low on memory."}
        backend.apply("pods", evicted)
        st = wait_status(backend, lambda st: st.get("restarts") == 1)
        assert conditions(st)["Running"]["reason"] == "Evicted"
        assert conditions(st)["Running"]["message"].endswith(f"pod {STS}-0 was disrupted (Evicted)")
        wait_for(lambda: trainer_pods(backend) == {})  # the failed pod is deleted; the controller makes attempt 1
        wait_for(lambda: ("Warning", "Evicted") in events(backend))


def test_lost_node_force_deletes_the_stuck_pod_and_restarts_the_group(backend: Backend, job: dict[str, Any]) -> None:
    job["spec"]["trainer"]["replicas"] = 2
    job["spec"]["trainer"]["hyperparameters"]["globalBatchSize"] = 16  # a multiple of 2 data-parallel ranks
    backend.apply(t.PLURAL, job)
    with backend.operator():
        wait_for(lambda: backend.get("statefulsets", STS))
        start_group(backend, 2, spec__nodeName="node-b")  # rank 1 on node-b: its deletion waits for its kubelet
        wait_status(backend, lambda st: st.get("state") == "Running")
        lose_readiness(backend, 1)
        # node-b stops answering: the taint manager deletes the pod, which then hangs in Terminating
        lost = pod(1, ready=False, spec__nodeName="node-b")
        lost["metadata"] |= {"deletionTimestamp": "2026-01-01T00:00:00Z", "deletionGracePeriodSeconds": 30}
        lost["status"]["conditions"].append(
            {"type": "DisruptionTarget", "status": "True", "reason": "DeletionByTaintManager"}
        )
        backend.apply("pods", lost)
        st = wait_status(backend, lambda st: st.get("restarts") == 1)
        assert conditions(st)["Running"]["reason"] == "NodeLost"
        assert conditions(st)["Running"]["message"].endswith(
            f"pod {STS}-1: its node is unreachable (DeletionByTaintManager)"
        )
        # only a force delete (grace 0) removes a pod bound to a node here, as with a dead kubelet
        wait_for(lambda: trainer_pods(backend) == {})
        wait_for(lambda: ("Warning", "NodeLost") in events(backend))


def _fake_clock(monkeypatch: pytest.MonkeyPatch) -> tuple[list[datetime.datetime], list[datetime.datetime]]:
    """Every reconcile runs at ``clock[0]``; ``seen`` records when each finished."""
    clock = [T0]
    seen: list[datetime.datetime] = []
    real = handlers.reconcile

    async def at_fake_time(body: Any, observed: Any, runtime: Any, kube: Any, now: Any) -> reconcile_module.Outcome:
        at = clock[0]
        outcome = await real(body, observed, runtime, kube, at)
        seen.append(at)
        return outcome

    monkeypatch.setattr(handlers, "reconcile", at_fake_time)
    return clock, seen


def _poke(backend: Backend, value: str) -> None:
    backend.patch(t.PLURAL, NAME, {"metadata": {"annotations": {"poke": value}}})


def test_stalled_step_restarts_the_group(
    backend: Backend, job: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    clock, seen = _fake_clock(monkeypatch)
    job["spec"]["runPolicy"] = {"stallSeconds": 100}
    backend.apply(t.PLURAL, job)
    with backend.operator() as op:
        wait_for(lambda: backend.get("statefulsets", STS))
        start_group(backend, 1)
        wait_status(backend, lambda st: st.get("state") == "Running")

        clock[0] = T0 + datetime.timedelta(seconds=50)
        op.runtime.metrics.put_trainer(backend.namespace, NAME, t.TrainerStatus(step=10))
        _poke(backend, "1")
        st = wait_status(backend, lambda st: (st.get("trainer") or {}).get("step") == 10)
        assert st["lastProgressTime"] == "2026-01-01T00:00:50Z"

        clock[0] = T0 + datetime.timedelta(seconds=149)  # 99 s without progress
        _poke(backend, "2")
        wait_for(lambda: clock[0] in seen)
        assert status(backend)["restarts"] == 0

        clock[0] = T0 + datetime.timedelta(seconds=150)  # 100 s without progress
        lose_readiness(backend)  # (also a reconcile at this time)
        _poke(backend, "3")
        st = wait_status(backend, lambda st: st.get("restarts") == 1)
        assert conditions(st)["Running"]["reason"] == "Stalled"
        wait_for(lambda: trainer_pods(backend) == {})
        wait_for(lambda: ("Warning", "Stalled") in events(backend))


def test_deadline_counts_from_the_last_resume_and_never_fails_a_suspended_job(
    backend: Backend, job: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    clock, seen = _fake_clock(monkeypatch)
    job["spec"]["runPolicy"] = {"suspend": True, "activeDeadlineSeconds": 100}
    backend.apply(t.PLURAL, job)
    with backend.operator():
        st = wait_status(backend, lambda st: st.get("state") == "Suspended")
        assert "startTime" not in st

        clock[0] = T0 + datetime.timedelta(seconds=1000)  # queued ten times longer than the deadline
        _poke(backend, "1")
        wait_for(lambda: clock[0] in seen)
        assert status(backend)["state"] == "Suspended"

        backend.patch(t.PLURAL, NAME, {"spec": {"runPolicy": {"suspend": False}}})  # admitted
        st = wait_status(backend, lambda st: st.get("startTime"))
        assert st["startTime"] == "2026-01-01T00:16:40Z"

        clock[0] = T0 + datetime.timedelta(seconds=1099)
        _poke(backend, "2")
        wait_for(lambda: clock[0] in seen)
        assert status(backend)["state"] != "Failed"

        clock[0] = T0 + datetime.timedelta(seconds=1100)
        _poke(backend, "3")
        st = wait_status(backend, lambda st: st.get("state") == "Failed")
        assert conditions(st)["Failed"]["reason"] == "DeadlineExceeded"
        wait_for(lambda: ("Warning", "DeadlineExceeded") in events(backend))


def test_kueue_submit_suspended_admit_preempt_resume_loses_nothing(backend: Backend, job: dict[str, Any]) -> None:
    queue = {"kueue.x-k8s.io/queue-name": "team-a-gpus"}
    job["metadata"]["labels"] = dict(queue)
    job["metadata"]["annotations"] = {"example.com/cost-center": "ml-research"}
    job["spec"]["runPolicy"] = {"suspend": True}
    kinds = [
        ("configmaps", f"{NAME}-config"),
        ("services", STS),
        ("statefulsets", STS),
        ("services", f"{NAME}-rollout"),
        ("deployments", f"{NAME}-rollout"),
    ]
    backend.apply(t.PLURAL, job)
    with backend.operator() as op:
        # submitted suspended: every child exists, every pod template carries the queue label, nothing runs
        wait_for(lambda: all(backend.get(p, n) for p, n in kinds))
        wait_status(backend, lambda st: st.get("state") == "Suspended")
        for plural, name in kinds:
            child = backend.get(plural, name)
            assert child is not None
            assert child["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "team-a-gpus"
            assert child["metadata"]["annotations"]["example.com/cost-center"] == "ml-research"
        for plural, name in (("statefulsets", STS), ("deployments", f"{NAME}-rollout")):
            child = backend.get(plural, name)
            assert child is not None and child["spec"]["replicas"] == 0
            template = child["spec"]["template"]["metadata"]
            assert template["labels"]["kueue.x-k8s.io/queue-name"] == "team-a-gpus"
            assert template["annotations"]["example.com/cost-center"] == "ml-research"
        uids = {(p, n): (backend.get(p, n) or {})["metadata"]["uid"] for p, n in kinds}

        # admitted: Kueue clears suspend
        backend.patch(t.PLURAL, NAME, {"spec": {"runPolicy": {"suspend": False}}})
        wait_for(lambda: (backend.get("statefulsets", STS) or {})["spec"]["replicas"] == 1)
        start_group(backend, 1)
        wait_status(backend, lambda st: st.get("state") == "Running")
        op.runtime.metrics.put_trainer(backend.namespace, NAME, t.TrainerStatus(step=60))
        _poke(backend, "1")
        wait_status(backend, lambda st: (st.get("trainer") or {}).get("step") == 60)
        template = wait_for(
            lambda: (
                (tpl := (backend.get("statefulsets", STS) or {})["spec"]["template"])
                and tpl["metadata"]["annotations"].get("poke") == "1"  # the job's annotations reach the pods too
                and tpl
            )
        )

        # preempted: Kueue sets suspend again; the pods go (SIGTERM: the trainer saves a checkpoint and exits)
        backend.patch(t.PLURAL, NAME, {"spec": {"runPolicy": {"suspend": True}}})
        wait_for(lambda: (backend.get("statefulsets", STS) or {})["spec"]["replicas"] == 0)
        wait_for(lambda: (backend.get("deployments", f"{NAME}-rollout") or {})["spec"]["replicas"] == 0)
        going = pod(0, ready=False, terminated={"exitCode": 143})
        going["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z"
        backend.apply("pods", going)  # the StatefulSet controller deletes it; a suspension is no failure
        backend.delete("pods", f"{STS}-0")
        lose_readiness(backend)
        st = wait_status(backend, lambda st: st.get("state") == "Suspended")
        assert st["restarts"] == 0 and "startTime" not in st

        # resumed: the same children and the same pod template (same claim, so the trainer resumes its checkpoint)
        backend.patch(t.PLURAL, NAME, {"spec": {"runPolicy": {"suspend": False}}})
        wait_for(lambda: (backend.get("statefulsets", STS) or {})["spec"]["replicas"] == 1)
        start_group(backend, 1)
        st = wait_status(backend, lambda st: st.get("state") == "Running")
        assert st["restarts"] == 0 and st["trainer"]["step"] == 60
        assert {(p, n): (backend.get(p, n) or {})["metadata"]["uid"] for p, n in kinds} == uids
        assert (backend.get("statefulsets", STS) or {})["spec"]["template"] == template
        reasons = [reason for _, reason in events(backend)]
        assert "Evicted" not in reasons and "TrainerFailed" not in reasons
        assert reasons.count("Suspended") == 2  # submitted suspended, then preempted


def test_training_fields_are_immutable_while_running(job: dict[str, Any]) -> None:
    """The CRD's CEL transition rule, as the API server evaluates it (``validation.validate_object``)."""
    running = json.loads(json.dumps(job))
    edited = json.loads(json.dumps(job))
    edited["spec"]["trainer"]["hyperparameters"]["maxSteps"] = 400
    errors = validation.validate_object(edited, old=running).errors
    assert [(e.path, e.message) for e in errors] == [
        (
            "spec.trainer",
            "spec.model and spec.trainer cannot change while the job runs; suspend it first "
            "(runPolicy.suspend: true), then edit",
        )
    ]
    suspended = json.loads(json.dumps(job))
    suspended["spec"]["runPolicy"] = {"suspend": True}
    assert validation.validate_object(edited, old=suspended).ok
    # not training fields: the rollout and the run policy may change at any time
    rollout_edit = json.loads(json.dumps(job))
    rollout_edit["spec"]["rollout"]["speculative"] = {"numSpeculativeTokens": 2}
    rollout_edit["spec"]["runPolicy"] = {"suspend": True}
    assert validation.validate_object(rollout_edit, old=running).ok
