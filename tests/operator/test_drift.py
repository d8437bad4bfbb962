"""Children follow the spec and nothing else: fields the spec stops asking for are removed, hand edits
are reverted, and children the spec no longer wants are pruned. Expectations written by hand."""

from __future__ import annotations

from typing import Any

from mtp_api import types as t
from tests.apiserver.harness import wait_for
from tests.operator.backends import Backend

NAME = "demo"
DEP = f"{NAME}-rollout"


def dep(backend: Backend) -> dict[str, Any]:
    return backend.get("deployments", DEP) or {}


def pod_spec(backend: Backend) -> dict[str, Any]:
    return dict(dep(backend).get("spec", {}).get("template", {}).get("spec", {}))


def test_a_field_the_spec_stops_asking_for_is_removed(backend: Backend, job: dict[str, Any]) -> None:
    job["spec"]["rollout"]["pod"] = {"nodeSelector": {"pool": "serving"}, "priorityClassName": "serving-high"}
    backend.apply(t.PLURAL, job)
    with backend.operator():
        wait_for(lambda: pod_spec(backend).get("nodeSelector") == {"pool": "serving"})
        assert pod_spec(backend)["priorityClassName"] == "serving-high"
        backend.patch(t.PLURAL, NAME, {"spec": {"rollout": {"pod": {"nodeSelector": None}}}})
        wait_for(lambda: "nodeSelector" not in pod_spec(backend))  # a merge patch alone would have kept it
        assert pod_spec(backend)["priorityClassName"] == "serving-high"
        backend.patch(t.PLURAL, NAME, {"spec": {"rollout": {"pod": None}}})
        wait_for(lambda: "priorityClassName" not in pod_spec(backend))
        assert pod_spec(backend)["automountServiceAccountToken"] is False  # the operator's own fields stay


def test_a_hand_edit_of_a_workload_is_reverted(backend: Backend, job: dict[str, Any]) -> None:
    if backend.real:
        return  # the same on a cluster, but the edit would race the Deployment controller here
    backend.apply(t.PLURAL, job)
    with backend.operator():
        wait_for(lambda: dep(backend).get("spec"))
        wait_for(lambda: (backend.get(t.PLURAL, NAME) or {}).get("status", {}).get("state") == "Created")
        original = dep(backend)["spec"]
        edited = {"spec": {"replicas": 7, "template": {"spec": {"containers": [{"name": "vllm", "image": "evil:1"}]}}}}
        backend.patch("deployments", DEP, edited)
        wait_for(lambda: dep(backend)["spec"] == original)


def test_a_hand_edit_of_a_config_map_is_reverted_and_a_hand_added_label_kept(
    backend: Backend, job: dict[str, Any]
) -> None:
    """A ConfigMap has no generation: the edit shows in managedFields (the editor took the field)."""
    cm = f"{NAME}-config"
    backend.apply(t.PLURAL, job)
    with backend.operator():
        wait_for(lambda: (backend.get(t.PLURAL, NAME) or {}).get("status", {}).get("state") == "Created")
        original = (backend.get("configmaps", cm) or {})["data"]
        backend.patch("configmaps", cm, {"metadata": {"labels": {"team": "ml"}}, "data": {"job.yaml": "evil: 1\n"}})
        wait_for(lambda: (backend.get("configmaps", cm) or {})["data"] == original)
        assert (backend.get("configmaps", cm) or {})["metadata"]["labels"]["team"] == "ml"  # not ours: it stays


def test_children_are_applied_by_the_operators_field_manager(backend: Backend, job: dict[str, Any]) -> None:
    backend.apply(t.PLURAL, job)
    with backend.operator():
        wait_for(lambda: (backend.get(t.PLURAL, NAME) or {}).get("status", {}).get("state") == "Created")
        for plural, name in (
            ("configmaps", f"{NAME}-config"),
            ("statefulsets", f"{NAME}-trainer"),
            ("deployments", DEP),
        ):
            entries = (backend.get(plural, name) or {})["metadata"]["managedFields"]
            ours = [e for e in entries if e["manager"] == "mtp-operator"]
            assert [e["operation"] for e in ours] == ["Apply"], (plural, entries)


def test_a_child_the_spec_no_longer_wants_is_pruned(backend: Backend, job: dict[str, Any]) -> None:
    backend.apply(t.PLURAL, job)
    with backend.operator():
        wait_for(lambda: backend.get("services", DEP) and backend.get("deployments", DEP))
        backend.patch(t.PLURAL, NAME, {"spec": {"rollout": None}})  # the SFT job no longer serves its export
        wait_for(lambda: backend.get("deployments", DEP) is None and backend.get("services", DEP) is None)
        for plural, name in (("configmaps", f"{NAME}-config"), ("services", f"{NAME}-trainer")):
            assert backend.get(plural, name) is not None
        assert backend.get("statefulsets", f"{NAME}-trainer") is not None
