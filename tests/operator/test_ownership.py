"""``ownership.owns`` against managedFields written the way the real API server writes them (by hand, from
``kubectl get -o yaml --show-managed-fields`` of a Deployment applied with server-side apply)."""

from __future__ import annotations

import copy
import json
from typing import Any

from mtp_operator import ownership

DESIRED: dict[str, Any] = {
    "apiVersion": "apps/v1",
    "kind": "Deployment",
    "metadata": {"name": "d", "namespace": "ns", "labels": {"app": "d"}},
    "spec": {
        "replicas": 1,
        "selector": {"matchLabels": {"app": "d"}},
        "template": {
            "spec": {
                "containers": [
                    {
                        "name": "vllm",
                        "args": ["-m", "x"],
                        "ports": [{"name": "http", "containerPort": 8000}],
                        "env": [{"name": "A", "value": "1"}, {"name": "B", "value": "2"}],
                    }
                ]
            }
        },
    },
}
APPLIED: dict[str, Any] = {
    "f:metadata": {"f:labels": {".": {}, "f:app": {}}},
    "f:spec": {
        "f:replicas": {},
        "f:selector": {},  # atomic
        "f:template": {
            "f:spec": {
                "f:containers": {
                    'k:{"name":"vllm"}': {
                        ".": {},
                        "f:name": {},
                        "f:args": {},  # atomic list
                        "f:ports": {
                            'k:{"containerPort":8000,"protocol":"TCP"}': {
                                ".": {},
                                "f:name": {},
                                "f:containerPort": {},
                            }
                        },
                        "f:env": {
                            'k:{"name":"A"}': {".": {}, "f:name": {}, "f:value": {}},
                            'k:{"name":"B"}': {".": {}, "f:name": {}, "f:value": {}},
                        },
                    }
                }
            }
        },
    },
}
MANAGED = [
    {"manager": "kube-controller-manager", "operation": "Update", "fieldsV1": {"f:metadata": {}}},
    {"manager": "mtp-operator", "operation": "Apply", "fieldsType": "FieldsV1", "fieldsV1": APPLIED},
    {"manager": "mtp-operator", "operation": "Update", "subresource": "status", "fieldsV1": {"f:status": {}}},
]


def test_the_applied_set_is_the_operators_apply_entry() -> None:
    assert json.loads(ownership.applied_fields(MANAGED) or "") == APPLIED
    assert ownership.applied_fields(MANAGED[:1]) is None
    assert ownership.applied_fields(None) is None


def test_owns_every_field_of_what_it_applied() -> None:
    assert ownership.owns(json.dumps(APPLIED), DESIRED)


def _without(path: list[str]) -> str:
    fields = copy.deepcopy(APPLIED)
    node = fields
    for token in path[:-1]:
        node = node[token]
    del node[path[-1]]
    return json.dumps(fields)


CONTAINER = ["f:spec", "f:template", "f:spec", "f:containers", 'k:{"name":"vllm"}']


def test_a_field_taken_by_another_manager_is_not_owned() -> None:
    assert not ownership.owns(_without(["f:spec", "f:replicas"]), DESIRED)  # kubectl scale
    assert not ownership.owns(_without([*CONTAINER, "f:args"]), DESIRED)  # an atomic list edited
    assert not ownership.owns(_without(["f:metadata", "f:labels", "f:app"]), DESIRED)
    assert not ownership.owns(_without([*CONTAINER, "f:env", 'k:{"name":"A"}']), DESIRED)
    assert not ownership.owns(None, DESIRED)  # never applied (a child made by an older operator)


def test_a_new_desired_field_is_not_owned_yet() -> None:
    desired = copy.deepcopy(DESIRED)
    desired["spec"]["template"]["spec"]["containers"][0]["env"].append({"name": "C", "value": "3"})
    assert not ownership.owns(json.dumps(APPLIED), desired)
    desired = copy.deepcopy(DESIRED)
    desired["spec"]["template"]["spec"]["nodeSelector"] = {"pool": "gpu"}
    assert not ownership.owns(json.dumps(APPLIED), desired)


class _FakeKube:
    def __init__(self) -> None:
        self.applied: list[str] = []

    async def apply(self, namespace: str, obj: dict[str, Any]) -> Any:
        self.applied.append(obj["metadata"]["name"])
        return obj


def test_a_child_no_longer_owned_is_applied_once_until_its_next_version() -> None:
    import asyncio

    from mtp_operator.apply import apply_children
    from mtp_operator.observed import ChildState, Observed

    desired = copy.deepcopy(DESIRED)
    desired["metadata"]["annotations"] = {"mtp.io/spec-hash": "h1"}
    applied = copy.deepcopy(APPLIED)
    applied["f:metadata"]["f:annotations"] = {".": {}, "f:mtp.io/spec-hash": {}}
    edited = _without(["f:spec", "f:replicas"])
    edited_fields = json.loads(edited)
    edited_fields["f:metadata"]["f:annotations"] = applied["f:metadata"]["f:annotations"]

    def observed(rv: str, fields: dict[str, Any]) -> Observed:
        child = ChildState("Deployment", "d", "uid", "h1", resource_version=rv, applied_fields=json.dumps(fields))
        return Observed({("Deployment", "d"): child})

    kube, written, owned = _FakeKube(), {}, {}  # type: ignore[var-annotated]

    def reconcile(seen: Observed) -> list[str]:
        return asyncio.run(apply_children(kube, "ns", [desired], seen, written, owned))  # type: ignore[arg-type]

    assert reconcile(observed("5", applied)) == []  # owned: no write
    assert reconcile(observed("6", edited_fields)) == ["apply (edited by hand: reverted) Deployment/d"]
    assert reconcile(observed("6", edited_fields)) == []  # the watch has not shown the apply yet: not again
    assert reconcile(observed("7", applied)) == []
    assert kube.applied == ["d"]
