"""The test API server behaves like Kubernetes where the operator relies on it."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import kmock
import pytest

from tests.apiserver.apiserver import TestApiServer, json_patch, strategic_merge_patch

MERGE = {"Content-Type": "application/merge-patch+json"}


async def _client() -> AsyncIterator[tuple[TestApiServer, aiohttp.ClientSession, str]]:
    srv = TestApiServer()
    srv.resources.load_bundled()
    srv.add_crd("mtp.io", "v1alpha1", "mtptrainingjobs", "MTPTrainingJob")
    async with srv, kmock.Server(srv) as server, aiohttp.ClientSession() as session:
        yield srv, session, str(server.url).rstrip("/")


def run(coro_fn: Any) -> None:
    async def main() -> None:
        async for srv, session, url in _client():
            await coro_fn(srv, session, url)

    asyncio.run(main())


JOBS = "/apis/mtp.io/v1alpha1/namespaces/ns/mtptrainingjobs"
CMS = "/api/v1/namespaces/ns/configmaps"


async def _json(resp: aiohttp.ClientResponse) -> Any:
    async with resp:
        return resp.status, await resp.json()


def test_create_fills_metadata_from_the_url_and_conflicts_on_repeat() -> None:
    async def body(srv: TestApiServer, s: aiohttp.ClientSession, url: str) -> None:
        code, obj = await _json(await s.post(url + CMS, json={"metadata": {"name": "a"}}))
        assert code == 200
        meta = obj["metadata"]
        assert (obj["apiVersion"], obj["kind"], meta["namespace"], meta["generation"]) == ("v1", "ConfigMap", "ns", 1)
        assert meta["uid"] and meta["resourceVersion"] and meta["creationTimestamp"]
        code, err = await _json(await s.post(url + CMS, json={"metadata": {"name": "a"}}))
        assert code == 409 and err["reason"] == "AlreadyExists"

    run(body)


def test_status_subresource_is_separate_and_generation_counts_spec_changes() -> None:
    async def body(srv: TestApiServer, s: aiohttp.ClientSession, url: str) -> None:
        _, job = await _json(
            await s.post(url + JOBS, json={"metadata": {"name": "j"}, "spec": {"a": 1}, "status": {"x": 1}})
        )
        assert "status" not in job
        _, job = await _json(
            await s.patch(url + JOBS + "/j/status", json={"status": {"x": 2}, "spec": {"a": 9}}, headers=MERGE)
        )
        assert job["status"] == {"x": 2} and job["spec"] == {"a": 1} and job["metadata"]["generation"] == 1
        _, job = await _json(
            await s.patch(url + JOBS + "/j", json={"status": {"x": 3}, "spec": {"a": 2}}, headers=MERGE)
        )
        assert job["status"] == {"x": 2} and job["spec"] == {"a": 2} and job["metadata"]["generation"] == 2
        rv = job["metadata"]["resourceVersion"]
        _, same = await _json(await s.patch(url + JOBS + "/j", json={"spec": {"a": 2}}, headers=MERGE))
        assert same["metadata"]["resourceVersion"] == rv  # a no-op write is not a new version

    run(body)


def test_put_checks_resource_version_and_json_patch_test_op() -> None:
    async def body(srv: TestApiServer, s: aiohttp.ClientSession, url: str) -> None:
        _, cm = await _json(await s.post(url + CMS, json={"metadata": {"name": "a"}, "data": {"k": "1"}}))
        code, _ = await _json(await s.put(url + CMS + "/a", json={**cm, "data": {"k": "2"}}))
        assert code == 200
        code, _ = await _json(await s.put(url + CMS + "/a", json={**cm, "data": {"k": "3"}}))
        assert code == 409
        stale = [
            {"op": "test", "path": "/metadata/resourceVersion", "value": cm["metadata"]["resourceVersion"]},
            {"op": "replace", "path": "/data/k", "value": "4"},
        ]
        code, _ = await _json(
            await s.patch(url + CMS + "/a", json=stale, headers={"Content-Type": "application/json-patch+json"})
        )
        assert code == 422
        code, _ = await _json(await s.put(url + CMS + "/missing", json={"metadata": {"name": "missing"}}))
        assert code == 404

    run(body)


def test_label_selectors_on_list() -> None:
    async def body(srv: TestApiServer, s: aiohttp.ClientSession, url: str) -> None:
        for name, labels in (("a", {"app": "x", "tier": "1"}), ("b", {"app": "y"}), ("c", {})):
            await _json(await s.post(url + CMS, json={"metadata": {"name": name, "labels": labels}}))
        for selector, want in (
            ("app=x", ["a"]),
            ("app!=x", ["b", "c"]),
            ("app", ["a", "b"]),
            ("!app", ["c"]),
            ("app in (x,y),tier", ["a"]),
            ("app notin (x)", ["b", "c"]),
        ):
            _, lst = await _json(await s.get(url + CMS, params={"labelSelector": selector}))
            assert sorted(i["metadata"]["name"] for i in lst["items"]) == want, selector

    run(body)


def test_watch_resumes_from_a_resource_version_without_replaying() -> None:
    async def body(srv: TestApiServer, s: aiohttp.ClientSession, url: str) -> None:
        await _json(await s.post(url + CMS, json={"metadata": {"name": "before"}}))
        _, lst = await _json(await s.get(url + CMS))
        rv = lst["metadata"]["resourceVersion"]
        await _json(await s.post(url + CMS, json={"metadata": {"name": "after", "labels": {"k": "v"}}}))
        await _json(await s.post(url + CMS, json={"metadata": {"name": "other"}}))
        params = {"watch": "true", "resourceVersion": rv, "timeoutSeconds": "1", "labelSelector": "k=v"}
        async with s.get(url + CMS, params=params) as resp:
            events = [json.loads(line) for line in (await resp.read()).splitlines() if line.strip()]
        assert [(e["type"], e["object"]["metadata"]["name"]) for e in events] == [("ADDED", "after")]

    run(body)


def test_owner_reference_garbage_collection_and_finalizers() -> None:
    async def body(srv: TestApiServer, s: aiohttp.ClientSession, url: str) -> None:
        _, job = await _json(
            await s.post(url + JOBS, json={"metadata": {"name": "j", "finalizers": ["f"]}, "spec": {}})
        )
        ref = {"apiVersion": "mtp.io/v1alpha1", "kind": "MTPTrainingJob", "name": "j", "uid": job["metadata"]["uid"]}
        await _json(await s.post(url + CMS, json={"metadata": {"name": "child", "ownerReferences": [ref]}}))
        await _json(await s.delete(url + JOBS + "/j"))
        assert (srv.get_object("mtptrainingjobs", "ns", "j") or {})["metadata"][
            "deletionTimestamp"
        ]  # held by the finalizer
        assert srv.get_object("configmaps", "ns", "child") is not None
        await _json(await s.patch(url + JOBS + "/j", json={"metadata": {"finalizers": None}}, headers=MERGE))
        assert srv.get_object("mtptrainingjobs", "ns", "j") is None
        assert srv.get_object("configmaps", "ns", "child") is None

    run(body)


@pytest.mark.parametrize(
    ("target", "patch", "want"),
    [
        (
            {"containers": [{"name": "a", "image": "1"}, {"name": "b"}]},
            {"containers": [{"name": "a", "image": "2"}]},
            {"containers": [{"name": "a", "image": "2"}, {"name": "b"}]},
        ),
        ({"env": [{"name": "X", "value": "1"}]}, {"env": [{"name": "X", "$patch": "delete"}]}, {"env": []}),
        ({"args": ["a", "b"]}, {"args": ["c"]}, {"args": ["c"]}),
    ],
)
def test_strategic_merge_keeps_keyed_lists(target: dict[str, Any], patch: dict[str, Any], want: dict[str, Any]) -> None:
    assert strategic_merge_patch(target, patch) == want


def test_json_patch_ops() -> None:
    doc = {"a": [1, 2], "b": {"c": 1}}
    out = json_patch(
        doc,
        [
            {"op": "add", "path": "/a/-", "value": 3},
            {"op": "remove", "path": "/b/c"},
            {"op": "replace", "path": "/a/0", "value": 0},
        ],
    )
    assert out == {"a": [0, 2, 3], "b": {}} and doc == {"a": [1, 2], "b": {"c": 1}}


APPLY = {"Content-Type": "application/apply-patch+yaml"}
DEPS = "/apis/apps/v1/namespaces/ns/deployments"


def _dep(containers: list[dict[str, Any]], **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "d", "labels": {"app": "d"}},
        "spec": {**spec, "template": {"spec": {"containers": containers}}},
    }


def _entry(obj: dict[str, Any], manager: str, operation: str = "Apply") -> dict[str, Any] | None:
    return next(
        (
            e
            for e in obj["metadata"].get("managedFields") or []
            if (e["manager"], e["operation"]) == (manager, operation)
        ),
        None,
    )


def test_server_side_apply_creates_records_ownership_and_removes_what_it_stops_sending() -> None:
    async def body(srv: TestApiServer, s: aiohttp.ClientSession, url: str) -> None:
        op = "?fieldManager=op&force=true"
        first = _dep([{"name": "c", "image": "a:1", "args": ["x"]}], replicas=2, paused=False)
        code, dep = await _json(await s.patch(url + DEPS + "/d" + op, data=json.dumps(first), headers=APPLY))
        assert code == 200 and dep["metadata"]["uid"] and dep["spec"]["replicas"] == 2  # created by the apply
        fields = _entry(dep, "op")
        assert fields is not None and fields["fieldsType"] == "FieldsV1"
        container = fields["fieldsV1"]["f:spec"]["f:template"]["f:spec"]["f:containers"]['k:{"name":"c"}']
        assert container == {".": {}, "f:name": {}, "f:image": {}, "f:args": {}}
        assert fields["fieldsV1"]["f:metadata"]["f:labels"] == {".": {}, "f:app": {}}
        # Another manager adds a label and an env variable: they are its fields, and stay.
        hand = {
            "metadata": {"labels": {"team": "ml"}},
            "spec": {"template": {"spec": {"containers": [{"name": "c", "env": [{"name": "E", "value": "1"}]}]}}},
        }
        strategic = {"Content-Type": "application/strategic-merge-patch+json"}
        _, dep = await _json(await s.patch(url + DEPS + "/d?fieldManager=kubectl-patch", json=hand, headers=strategic))
        assert _entry(dep, "kubectl-patch", "Update") is not None
        # The applier stops sending paused and args: they go; the other manager's label and env stay.
        second = _dep([{"name": "c", "image": "a:2"}], replicas=2)
        _, dep = await _json(await s.patch(url + DEPS + "/d" + op, data=json.dumps(second), headers=APPLY))
        assert "paused" not in dep["spec"]
        (c,) = dep["spec"]["template"]["spec"]["containers"]
        assert c == {"name": "c", "image": "a:2", "env": [{"name": "E", "value": "1"}]}
        assert dep["metadata"]["labels"] == {"app": "d", "team": "ml"}
        # An unchanged apply writes nothing.
        rv = dep["metadata"]["resourceVersion"]
        _, same = await _json(await s.patch(url + DEPS + "/d" + op, data=json.dumps(second), headers=APPLY))
        assert (
            same["metadata"]["resourceVersion"] == rv
            and same["metadata"]["managedFields"] == dep["metadata"]["managedFields"]
        )

    run(body)


def test_a_hand_edit_takes_ownership_and_a_forced_apply_takes_it_back() -> None:
    async def body(srv: TestApiServer, s: aiohttp.ClientSession, url: str) -> None:
        applied = _dep([{"name": "c", "image": "a:1"}], replicas=2)
        await _json(await s.patch(url + DEPS + "/d?fieldManager=op&force=true", json=applied, headers=APPLY))
        _, dep = await _json(
            await s.patch(url + DEPS + "/d?fieldManager=kubectl-edit", json={"spec": {"replicas": 7}}, headers=MERGE)
        )
        ours = _entry(dep, "op")
        assert ours is not None and "f:replicas" not in ours["fieldsV1"]["f:spec"]  # moved to the editor
        theirs = _entry(dep, "kubectl-edit", "Update")
        assert theirs is not None and theirs["fieldsV1"] == {"f:spec": {"f:replicas": {}}}
        code, err = await _json(await s.patch(url + DEPS + "/d?fieldManager=op", json=applied, headers=APPLY))
        assert code == 409 and "kubectl-edit" in err["message"]  # without force, a conflict
        code, dep = await _json(
            await s.patch(url + DEPS + "/d?fieldManager=op&force=true", json=applied, headers=APPLY)
        )
        assert code == 200 and dep["spec"]["replicas"] == 2
        assert _entry(dep, "kubectl-edit", "Update") is None  # it owned nothing else
        ours = _entry(dep, "op")
        assert ours is not None and "f:replicas" in ours["fieldsV1"]["f:spec"]
        code, _ = await _json(await s.patch(url + DEPS + "/d", json=applied, headers=APPLY))
        assert code == 400  # fieldManager is required

    run(body)


def test_an_equal_value_is_shared_and_survives_the_applier_dropping_it() -> None:
    async def body(srv: TestApiServer, s: aiohttp.ClientSession, url: str) -> None:
        await _json(await s.post(url + CMS + "?fieldManager=old", json={"metadata": {"name": "a"}, "data": {"k": "1"}}))
        applied = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "a"}, "data": {"k": "1"}}
        code, cm = await _json(await s.patch(url + CMS + "/a?fieldManager=op", json=applied, headers=APPLY))
        assert code == 200  # same value: no conflict, shared
        assert _entry(cm, "old", "Update") is not None and _entry(cm, "op") is not None
        applied["data"] = {}
        _, cm = await _json(await s.patch(url + CMS + "/a?fieldManager=op", json=applied, headers=APPLY))
        assert cm["data"] == {"k": "1"}  # still owned by "old"

    run(body)
