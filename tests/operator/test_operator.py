"""The operator end to end: a real Kopf operator against the test API server (or a real cluster).

Each test waits for an observable outcome; timeouts only bound a hang, nothing is timed.
"""

from __future__ import annotations

import datetime
from typing import Any

import pytest
import yaml

from mtp_api import types as t
from mtp_operator import handlers, metrics
from mtp_operator import reconcile as reconcile_module
from tests.apiserver.harness import wait_for
from tests.operator.backends import Backend

NAME = "demo"
CHILDREN = [
    ("configmaps", f"{NAME}-config"),
    ("services", f"{NAME}-trainer"),
    ("statefulsets", f"{NAME}-trainer"),
    ("poddisruptionbudgets", f"{NAME}-trainer"),
    ("services", f"{NAME}-rollout"),
    ("deployments", f"{NAME}-rollout"),
]
PDB = ("poddisruptionbudgets", f"{NAME}-trainer")


def status(backend: Backend) -> dict[str, Any]:
    body = backend.get(t.PLURAL, NAME) or {}
    return dict(body.get("status") or {})


def wait_state(backend: Backend, state: str) -> dict[str, Any]:
    return wait_for(lambda: status(backend) if status(backend).get("state") == state else None)


def all_children(backend: Backend) -> bool:
    return all(backend.get(plural, name) is not None for plural, name in CHILDREN)


def conditions(st: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["type"]: c for c in st.get("conditions", [])}


def args_of(deployment: dict[str, Any]) -> list[str]:
    return list(deployment["spec"]["template"]["spec"]["containers"][0]["args"])


def test_create_makes_children_with_owner_references_and_status(backend: Backend, job: dict[str, Any]) -> None:
    backend.apply(t.PLURAL, job)
    with backend.operator():
        wait_for(lambda: all_children(backend))
        st = wait_state(backend, "Created")
        owner = backend.get(t.PLURAL, NAME)
        assert owner is not None
        for plural, name in CHILDREN:
            child = backend.get(plural, name)
            assert child is not None
            refs = child["metadata"]["ownerReferences"]
            assert refs == [
                {
                    "apiVersion": t.API_VERSION,
                    "kind": t.KIND,
                    "name": NAME,
                    "uid": owner["metadata"]["uid"],
                    "controller": True,
                    "blockOwnerDeletion": True,
                }
            ]
        cm = backend.get("configmaps", f"{NAME}-config")
        assert cm is not None
        trainer_doc = yaml.safe_load(cm["data"]["job.yaml"])
        assert t.MTPTrainingJob.model_validate(trainer_doc).spec.trainer.hyperparameters.max_steps == 200
        sts = backend.get("statefulsets", f"{NAME}-trainer")
        assert sts is not None and sts["spec"]["replicas"] == 1
        assert conditions(st)["Created"]["status"] == "True"
        assert conditions(st)["Running"]["reason"] == "PodsNotReady"
        assert st["observedGeneration"] == owner["metadata"]["generation"]

        if not backend.real:  # no kubelet here: report the pods ready as the StatefulSet controller would
            backend.patch("statefulsets", f"{NAME}-trainer", {"status": {"readyReplicas": 1}}, "status")
            backend.patch("deployments", f"{NAME}-rollout", {"status": {"readyReplicas": 1}}, "status")
            st = wait_state(backend, "Running")
            assert conditions(st)["Running"]["reason"] == "PodsReady"
            assert st["trainer"]["readyReplicas"] == 1 and st["rollout"]["readyReplicas"] == 1


def test_children_and_pods_are_watched_with_the_operators_label_selector(backend: Backend, job: dict[str, Any]) -> None:
    if backend.real:
        pytest.skip("reads the test API server's record of watch requests")
    backend.apply(t.PLURAL, job)
    with backend.operator():
        wait_for(lambda: all_children(backend))
        watches = backend.server.call(lambda: list(backend.server.server.watches))  # type: ignore[attr-defined]
    selectors = {plural: params.get("labelSelector") for plural, params in watches}
    for plural in ("configmaps", "services", "statefulsets", "deployments", "poddisruptionbudgets", "pods"):
        assert selectors[plural] == "app.kubernetes.io/managed-by=mtp-operator", plural
    assert selectors[t.PLURAL] is None  # every job is the operator's


def test_idle_reconciles_write_nothing(backend: Backend, job: dict[str, Any]) -> None:
    if backend.writes() is None:
        pytest.skip("write counting needs the test API server")
    backend.apply(t.PLURAL, job)
    with backend.operator() as op:
        wait_for(lambda: all_children(backend))
        wait_state(backend, "Created")
        before_writes = backend.writes()
        before = metrics.RECONCILES.labels("child")._value.get()
        for i in range(5):  # pod events wake the job's reconcile; nothing about the job changed
            backend.apply("pods", _pod(f"{NAME}-trainer-{i}", restarts=0))
        wait_for(lambda: metrics.RECONCILES.labels("child")._value.get() >= before + 5)
        assert op.runtime is not None
        assert backend.writes() == before_writes


def test_spec_change_rolls_the_deployment_only(backend: Backend, job: dict[str, Any]) -> None:
    def bodies() -> dict[tuple[str, str], Any]:
        got = {(plural, name): backend.get(plural, name) for plural, name in CHILDREN}
        return {k: (v or {}).get("data" if k[0] == "configmaps" else "spec") for k, v in got.items()}

    backend.apply(t.PLURAL, job)
    with backend.operator():
        wait_for(lambda: all_children(backend))
        wait_for(lambda: status(backend).get("observedGeneration") == 1)
        dep = backend.get("deployments", f"{NAME}-rollout")
        sts = backend.get("statefulsets", f"{NAME}-trainer")
        assert dep is not None and sts is not None
        assert '{"method":"mtp","num_speculative_tokens":1}' in args_of(dep)
        before = bodies()

        backend.patch(t.PLURAL, NAME, {"spec": {"rollout": {"speculative": {"numSpeculativeTokens": 2}}}})

        new = wait_for(
            lambda: (
                (d := backend.get("deployments", f"{NAME}-rollout"))
                and '{"method":"mtp","num_speculative_tokens":2}' in args_of(d)
                and d
            )
        )
        wait_for(lambda: status(backend).get("observedGeneration") == 2)  # the reconcile of generation 2 is done
        after = bodies()
        changed = {k for k in before if before[k] != after[k]}
        # exactly these two: the rollout's pod template (it rolls) and the ConfigMap's rollout plan (data,
        # no pod reads it to restart); the StatefulSet's template is untouched, so no trainer pod restarts.
        assert changed == {("configmaps", f"{NAME}-config"), ("deployments", f"{NAME}-rollout")}
        assert new["spec"]["template"] != dep["spec"]["template"]
        assert new["metadata"]["generation"] > dep["metadata"]["generation"]
        sts_after = backend.get("statefulsets", f"{NAME}-trainer")
        assert sts_after is not None and sts_after["metadata"]["generation"] == sts["metadata"]["generation"]


def test_suspend_scales_to_zero_and_resume_scales_back(backend: Backend, job: dict[str, Any]) -> None:
    backend.apply(t.PLURAL, job)
    with backend.operator():
        wait_for(lambda: all_children(backend))
        backend.patch(t.PLURAL, NAME, {"spec": {"runPolicy": {"suspend": True}}})
        st = wait_state(backend, "Suspended")
        assert conditions(st)["Suspended"]["status"] == "True"
        wait_for(lambda: (backend.get("statefulsets", f"{NAME}-trainer") or {})["spec"]["replicas"] == 0)
        wait_for(lambda: (backend.get("deployments", f"{NAME}-rollout") or {})["spec"]["replicas"] == 0)
        wait_for(lambda: backend.get(*PDB) is None)  # no trainer pods to protect: the budget is pruned

        backend.patch(t.PLURAL, NAME, {"spec": {"runPolicy": {"suspend": False}}})
        st = wait_for(lambda: (s := status(backend)).get("state") in ("Created", "Running") and s)
        assert conditions(st)["Suspended"] | {"lastTransitionTime": None} == {
            "type": "Suspended",
            "status": "False",
            "reason": "Resumed",
            "message": "",
            "lastTransitionTime": None,
            "observedGeneration": 3,
        }
        wait_for(lambda: (backend.get("statefulsets", f"{NAME}-trainer") or {})["spec"]["replicas"] == 1)
        wait_for(lambda: (backend.get("deployments", f"{NAME}-rollout") or {})["spec"]["replicas"] == 1)
        pdb = wait_for(lambda: backend.get(*PDB))
        assert pdb["spec"]["maxUnavailable"] == 0


def test_child_deleted_by_hand_is_recreated(backend: Backend, job: dict[str, Any]) -> None:
    backend.apply(t.PLURAL, job)
    with backend.operator():
        wait_for(lambda: all_children(backend))
        for plural, name in (("statefulsets", f"{NAME}-trainer"), ("configmaps", f"{NAME}-config")):
            old = backend.get(plural, name)
            assert old is not None
            backend.delete(plural, name)

            def replaced(p: str = plural, n: str = name, uid: str = old["metadata"]["uid"]) -> dict[str, Any] | None:
                c = backend.get(p, n)
                return c if c is not None and c["metadata"]["uid"] != uid else None

            new = wait_for(replaced)
            body = "data" if plural == "configmaps" else "spec"
            assert new[body] == old[body]


def test_deleted_job_leaves_nothing_behind(backend: Backend, job: dict[str, Any]) -> None:
    backend.apply(t.PLURAL, job)
    with backend.operator() as op:
        wait_for(lambda: all_children(backend))
        op.runtime.metrics.put_rollout(backend.namespace, NAME, t.RolloutStatus(acceptance_rate=0.5))
        backend.delete(t.PLURAL, NAME)
        wait_for(lambda: backend.get(t.PLURAL, NAME) is None)  # no finalizer to release
        wait_for(lambda: not any(backend.get(plural, name) for plural, name in CHILDREN))
        wait_for(lambda: len(op.runtime.metrics) == 0)


def test_a_job_deletes_with_the_operator_stopped(backend: Backend, job: dict[str, Any]) -> None:
    """No finalizer on jobs (no per-job Kopf timer or daemon): with the operator down or uninstalled, a
    delete completes at once and the garbage collector removes the children through owner references."""
    backend.apply(t.PLURAL, job)
    with backend.operator():
        wait_for(lambda: all_children(backend))
        wait_state(backend, "Created")
    body = backend.get(t.PLURAL, NAME)
    assert body is not None and "finalizers" not in body["metadata"]
    backend.delete(t.PLURAL, NAME)
    wait_for(lambda: backend.get(t.PLURAL, NAME) is None)
    wait_for(lambda: not any(backend.get(plural, name) for plural, name in CHILDREN))


def test_restart_mid_reconcile_creates_no_duplicates(backend: Backend, job: dict[str, Any]) -> None:
    if backend.real:
        pytest.skip("needs fault injection in the test API server")
    server = backend.server  # type: ignore[attr-defined]
    server.call(lambda: server.server.fail("PATCH", "deployments"))  # children are created by apply
    backend.apply(t.PLURAL, job)
    with backend.operator():
        wait_for(lambda: backend.get("services", f"{NAME}-rollout") is not None)
    assert backend.get("deployments", f"{NAME}-rollout") is None  # the first operator died mid-way
    server.call(server.server.heal)
    posts_before = server.call(lambda: server.server.counters.snapshot())
    with backend.operator():
        wait_for(lambda: all_children(backend))
        wait_state(backend, "Created")
    posts = server.call(lambda: server.server.counters.snapshot())
    writes = {
        p: sum(posts.by_resource[(m, p)] - posts_before.by_resource[(m, p)] for m in ("POST", "PATCH", "PUT"))
        for p, _ in CHILDREN
    }
    assert writes == {"configmaps": 0, "services": 0, "statefulsets": 0, "poddisruptionbudgets": 0, "deployments": 1}
    for plural, _ in CHILDREN:
        assert len(backend.list(plural)) == (2 if plural == "services" else 1)


def test_succeeded_state_sticks(backend: Backend, job: dict[str, Any]) -> None:
    backend.apply(t.PLURAL, job)
    with backend.operator() as op:
        wait_for(lambda: all_children(backend))
        op.runtime.metrics.put_trainer(
            backend.namespace, NAME, t.TrainerStatus(step=200, lm_loss=1.23456, mtp_loss=2.0)
        )
        backend.apply("pods", _pod(f"{NAME}-trainer-0", restarts=0, last_exit_code=0, message=DONE))
        st = wait_state(backend, "Succeeded")
        assert st["trainer"]["step"] == 200 and st["trainer"]["lmLoss"] == 1.2346
        assert conditions(st)["Succeeded"]["reason"] == "TrainingCompleted"
        assert "completionTime" in st
        wait_for(lambda: (backend.get("statefulsets", f"{NAME}-trainer") or {})["spec"]["replicas"] == 0)
        assert (backend.get("deployments", f"{NAME}-rollout") or {})["spec"]["replicas"] == 1  # keeps serving
        wait_for(lambda: backend.get(*PDB) is None)  # the trainer is done: its budget goes

        backend.delete("statefulsets", f"{NAME}-trainer")
        backend.patch(t.PLURAL, NAME, {"spec": {"runPolicy": {"suspend": True}}})
        wait_for(lambda: status(backend).get("observedGeneration") is not None)
        op.runtime.metrics.put_rollout(backend.namespace, NAME, t.RolloutStatus(acceptance_rate=0.81))  # as collected
        backend.patch(t.PLURAL, NAME, {"metadata": {"labels": {"poke": "2"}}})
        wait_for(lambda: (status(backend).get("rollout") or {}).get("acceptanceRate") == 0.81)
        assert status(backend)["state"] == "Succeeded"
        assert backend.get("statefulsets", f"{NAME}-trainer") is None  # never re-created


def test_ttl_deletes_a_finished_job_after_the_ttl_and_not_before(
    backend: Backend, job: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """``runPolicy.ttlSecondsAfterFinished``: counted from ``completionTime``, checked on every reconcile.

    Time is driven by hand: every reconcile runs at ``clock[0]`` (the handlers' ``now`` is replaced),
    and the spy records the time and the actions of each finished reconcile.
    """
    t0 = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)
    clock = [t0]
    seen: list[tuple[datetime.datetime, list[str]]] = []
    real_reconcile = handlers.reconcile

    async def at_fake_time(
        body: Any, observed: Any, runtime: Any, kube: Any, now: datetime.datetime
    ) -> reconcile_module.Outcome:
        at = clock[0]
        outcome = await real_reconcile(body, observed, runtime, kube, at)
        seen.append((at, list(outcome.actions)))
        return outcome

    def reconciled_at(at: datetime.datetime) -> list[list[str]]:
        return [actions for when, actions in list(seen) if when == at]

    def poke(value: str) -> None:  # any event runs a reconcile
        backend.patch(t.PLURAL, NAME, {"metadata": {"labels": {"poke": value}}})

    ttl_delete = f"delete {t.KIND}/{NAME} (ttlSecondsAfterFinished)"
    monkeypatch.setattr(handlers, "reconcile", at_fake_time)
    job["spec"]["runPolicy"] = {"ttlSecondsAfterFinished": 100}
    backend.apply(t.PLURAL, job)
    with backend.operator():
        wait_for(lambda: all_children(backend))
        assert wait_state(backend, "Created")["startTime"] == "2026-01-01T00:00:00Z"

        clock[0] = t0 + datetime.timedelta(seconds=50)  # training finishes 50 s after the start
        backend.apply("pods", _pod(f"{NAME}-trainer-0", restarts=0, last_exit_code=0, message=DONE))
        st = wait_state(backend, "Succeeded")
        assert st["completionTime"] == "2026-01-01T00:00:50Z"

        # 99 s after completion (and 149 s after the start: a TTL counted from the start would fire here)
        clock[0] = t0 + datetime.timedelta(seconds=149)
        poke("2")
        wait_for(lambda: reconciled_at(clock[0]))
        assert [a for _, actions in list(seen) for a in actions if a == ttl_delete] == []
        kept = backend.get(t.PLURAL, NAME)
        assert kept is not None and "deletionTimestamp" not in kept["metadata"]

        # 100 s after completion: the job goes, and its children with it (owner references)
        clock[0] = t0 + datetime.timedelta(seconds=150)
        poke("3")
        wait_for(lambda: backend.get(t.PLURAL, NAME) is None)
        assert {when for when, actions in list(seen) if ttl_delete in actions} == {clock[0]}  # then, never before
        wait_for(lambda: not any(backend.get(plural, name) for plural, name in CHILDREN))


def test_backoff_limit_fails_the_job_and_it_stays_failed(backend: Backend, job: dict[str, Any]) -> None:
    if backend.real:
        pytest.skip("restart counts come from real pods; not forced on a cluster")
    job["spec"]["runPolicy"] = {"backoffLimit": 0}
    backend.apply(t.PLURAL, job)
    with backend.operator():
        wait_for(lambda: all_children(backend))
        backend.apply("pods", _pod(f"{NAME}-trainer-0", restarts=3, last_exit_code=1))  # one incident > 0
        st = wait_state(backend, "Failed")
        assert conditions(st)["Failed"]["reason"] == "BackoffLimitExceeded"
        wait_for(lambda: (backend.get("deployments", f"{NAME}-rollout") or {})["spec"]["replicas"] == 0)
        backend.delete("pods", f"{NAME}-trainer-0")  # the restarts are gone, the verdict is not
        backend.patch(t.PLURAL, NAME, {"metadata": {"labels": {"poke": "1"}}})
        wait_for(lambda: (backend.get(t.PLURAL, NAME) or {})["metadata"]["labels"].get("poke") == "1")
        assert status(backend)["state"] == "Failed"


def test_trainer_exit_2_fails_the_job_as_invalid_spec(backend: Backend, job: dict[str, Any]) -> None:
    if backend.real:
        pytest.skip("exit codes come from real pods; not forced on a cluster")
    job["spec"]["runPolicy"] = {"backoffLimit": 5}
    backend.apply(t.PLURAL, job)
    with backend.operator():
        wait_for(lambda: all_children(backend))
        backend.apply("pods", _pod(f"{NAME}-trainer-0", restarts=1, last_exit_code=2))
        st = wait_state(backend, "Failed")
        assert conditions(st)["Failed"]["reason"] == "InvalidSpec"
        assert f"{NAME}-trainer-0" in conditions(st)["Failed"]["message"]
        wait_for(lambda: (backend.get("statefulsets", f"{NAME}-trainer") or {})["spec"]["replicas"] == 0)
        event = wait_for(lambda: next((e for e in backend.list("events") if e.get("reason") == "InvalidSpec"), None))
        assert (event["type"], event["involvedObject"]["kind"], event["involvedObject"]["name"]) == (
            "Warning",
            t.KIND,
            NAME,
        )
        assert event["message"] == conditions(st)["Failed"]["message"]


def test_operator_metrics_count_reconciles_and_jobs(backend: Backend, job: dict[str, Any]) -> None:
    backend.apply(t.PLURAL, job)
    with backend.operator():
        wait_state(backend, "Created")
        text = _exposition()
        assert (
            f'mtptrainingjob_info{{name="{NAME}",namespace="{backend.namespace}",pipeline="sft",state="Created",training_mode="joint"}} 1.0'
            in text
        )
        assert (
            f'mtptrainingjob_condition{{condition="Created",name="{NAME}",namespace="{backend.namespace}"}} 1.0' in text
        )
        assert 'mtp_operator_reconcile_total{trigger="event"}' in text
        assert "mtp_operator_reconcile_duration_seconds_bucket" in text


def _exposition() -> str:
    from prometheus_client import generate_latest

    return generate_latest(metrics.REGISTRY).decode()


DONE = 'mtp-complete {"export": "/ckpt/hf", "step": 200}'  # rank 0's termination message after the export


def _pod(name: str, restarts: int, last_exit_code: int | None = None, message: str = "") -> dict[str, Any]:
    container: dict[str, Any] = {"name": "trainer", "restartCount": restarts}
    if last_exit_code is not None:
        container["lastState"] = {"terminated": {"exitCode": last_exit_code, "message": message}}
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "labels": {
                "app.kubernetes.io/managed-by": "mtp-operator",
                "mtp.io/job-name": NAME,
                "app.kubernetes.io/component": "trainer",
            },
        },
        "spec": {"containers": [{"name": "trainer", "image": "x"}]},
        "status": {"phase": "Running", "containerStatuses": [container]},
    }
