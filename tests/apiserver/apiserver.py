"""A kmock-based Kubernetes API server that behaves like the real one where the operator relies on it.

kmock 0.8's ``KubernetesEmulator`` is a JSON store; the operator's correctness depends on more:
resourceVersion and watch resumption (or kopf misses and replays events), uid and owner-reference
garbage collection (or "a deleted job leaves nothing behind" cannot be tested), label selectors,
the status subresource being separate from the main resource (or status writes bump generation),
PUT, JSON patch with ``test``, strategic merge of keyed lists, and server-side apply with per-manager
field ownership in ``metadata.managedFields`` (``fields.py``). This module keeps kmock's
routing, discovery and error rendering (``KubernetesScaffold``) and replaces the store.

Deliberate simplifications, documented so nobody relies on them: garbage collection is synchronous
(the real one is eventual); no admission or schema validation; no controllers run, so tests set a
StatefulSet's ``status.readyReplicas`` themselves through ``/status``; the event log is never compacted.
Pods bound to a node (``spec.nodeName``) are deleted gracefully and, with no kubelet to confirm, stay
Terminating until a delete with ``gracePeriodSeconds: 0``: a node that was lost, in effect.

``ApiCounters`` counts requests by verb so the benchmark can report requests and writes per job.
"""

from __future__ import annotations

import asyncio
import copy
import datetime
import itertools
import json
import random
import string
from collections import Counter
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from typing import Any

import attrs
import kmock
import yaml

from tests.apiserver import fields

Key = tuple[str, str, str, str | None, str]  # group, version, plural, namespace, name

WRITE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})

# Strategic-merge keys for the list fields our workloads use (from k8s.io/api's patchMergeKey tags).
_MERGE_KEYS = {
    "containers": "name",
    "initContainers": "name",
    "env": "name",
    "ports": "containerPort",
    "volumes": "name",
    "volumeMounts": "mountPath",
    "conditions": "type",
    "ownerReferences": "uid",
}


def _conflict(message: str, reason: str = "Conflict") -> kmock.KubernetesError:
    return kmock.KubernetesError(status=409, reason=reason, message=message)


def _not_found(what: str) -> kmock.KubernetesError:
    return kmock.KubernetesError(status=404, reason="NotFound", message=f"{what} not found")


@dataclass
class ApiCounters:
    """Requests seen by the server, by HTTP method and by resource plural."""

    by_method: Counter[str] = field(default_factory=Counter)
    by_resource: Counter[tuple[str, str]] = field(default_factory=Counter)

    def add(self, method: str, plural: str) -> None:
        self.by_method[method] += 1
        self.by_resource[(method, plural)] += 1

    @property
    def total(self) -> int:
        return sum(self.by_method.values())

    @property
    def writes(self) -> int:
        return sum(n for m, n in self.by_method.items() if m in WRITE_METHODS)

    def snapshot(self) -> ApiCounters:
        return ApiCounters(Counter(self.by_method), Counter(self.by_resource))


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch: a strategic merge that knows no list merge keys."""
    return strategic_merge_patch(target, patch, merge_keys={})


def strategic_merge_patch(
    target: Any, patch: Any, key: str | None = None, merge_keys: dict[str, str] = _MERGE_KEYS
) -> Any:
    """Strategic merge for the list fields in ``merge_keys``; a merge patch everywhere else."""
    if isinstance(patch, list) and isinstance(target, list) and key in merge_keys:
        mk = merge_keys[key]
        merged = [copy.deepcopy(x) for x in target]
        for item in patch:
            idx = next((i for i, x in enumerate(merged) if isinstance(x, dict) and x.get(mk) == item.get(mk)), None)
            if isinstance(item, dict) and item.get("$patch") == "delete":
                if idx is not None:
                    merged.pop(idx)
            elif idx is None:
                merged.append(copy.deepcopy(item))
            else:
                merged[idx] = strategic_merge_patch(merged[idx], item, merge_keys=merge_keys)
        return merged
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = dict(target) if isinstance(target, dict) else {}
    for k, v in patch.items():
        if v is None:
            out.pop(k, None)
        else:
            out[k] = strategic_merge_patch(out.get(k), v, k, merge_keys)
    return out


def _pointer(path: str) -> list[str]:
    return [p.replace("~1", "/").replace("~0", "~") for p in path.lstrip("/").split("/")] if path else []


def json_patch(target: Any, ops: list[dict[str, Any]]) -> Any:
    """RFC 6902 JSON patch: add, remove, replace and test (kopf uses ``test`` on resourceVersion)."""
    doc = copy.deepcopy(target)
    for op in ops:
        parts = _pointer(op["path"])
        parent: Any = doc
        for p in parts[:-1]:
            parent = parent[int(p)] if isinstance(parent, list) else parent[p]
        last = parts[-1] if parts else ""
        kind = op["op"]
        if kind == "test":
            current = parent[int(last)] if isinstance(parent, list) else parent.get(last)
            if current != op["value"]:
                raise kmock.KubernetesError(status=422, reason="Invalid", message=f"test failed at {op['path']}")
        elif kind == "remove":
            del parent[int(last) if isinstance(parent, list) else last]
        elif kind in ("add", "replace"):
            if isinstance(parent, list):
                if last == "-":
                    parent.append(op["value"])
                elif kind == "add":
                    parent.insert(int(last), op["value"])
                else:
                    parent[int(last)] = op["value"]
            else:
                parent[last] = op["value"]
        else:
            raise kmock.KubernetesError(status=422, reason="Invalid", message=f"unsupported op {kind}")
    return doc


def _selector_matches(selector: str | None, labels: dict[str, str]) -> bool:
    """Kubernetes label selectors: ``k=v``, ``k==v``, ``k!=v``, ``k``, ``!k``, ``k in (a,b)``, ``k notin (a,b)``."""
    if not selector:
        return True
    terms: list[str] = []
    depth, cur = 0, ""
    for ch in selector:
        depth += ch == "("
        depth -= ch == ")"
        if ch == "," and depth == 0:
            terms.append(cur)
            cur = ""
        else:
            cur += ch
    terms.append(cur)
    for term in (t.strip() for t in terms if t.strip()):
        if " notin " in term or " in " in term:
            neg = " notin " in term
            k, vals = term.split(" notin " if neg else " in ", 1)
            values = {v.strip() for v in vals.strip().strip("()").split(",")}
            has = labels.get(k.strip()) in values
            if has == neg:
                return False
        elif "!=" in term:
            k, v = term.split("!=", 1)
            if labels.get(k.strip()) == v.strip():
                return False
        elif "=" in term:
            k, v = term.replace("==", "=").split("=", 1)
            if labels.get(k.strip()) != v.strip():
                return False
        elif term.startswith("!"):
            if term[1:].strip() in labels:
                return False
        elif term not in labels:
            return False
    return True


def _field_matches(selector: str | None, obj: dict[str, Any]) -> bool:
    if not selector:
        return True
    for term in selector.split(","):
        neg = "!=" in term
        k, v = term.replace("==", "=").split("!=" if neg else "=", 1)
        node: Any = obj
        for part in k.strip().split("."):
            node = node.get(part) if isinstance(node, dict) else None
        if (str(node) == v.strip()) == neg:
            return False
    return True


@attrs.define(kw_only=True)
class TestApiServer(kmock.KubernetesScaffold):
    """The stateful server; see the module docstring for what it emulates."""

    __test__ = False  # not a pytest class

    gc: bool = True
    objects: dict[Key, dict[str, Any]] = attrs.field(factory=dict, init=False)
    counters: ApiCounters = attrs.field(factory=ApiCounters, init=False)
    _rv: itertools.count[int] = attrs.field(factory=lambda: itertools.count(1), init=False)
    _last_rv: int = attrs.field(default=0, init=False)
    _log: list[tuple[int, str, str, str, dict[str, Any]]] = attrs.field(factory=list, init=False)
    _wake: asyncio.Event | None = attrs.field(default=None, init=False)
    _uids: itertools.count[int] = attrs.field(factory=lambda: itertools.count(1), init=False)
    _faults: list[tuple[str, str, int]] = attrs.field(factory=list, init=False)
    _owners: dict[Key, fields.Owners] = attrs.field(factory=dict, init=False)
    # (plural, query parameters) of every watch request, for assertions on what clients ask for.
    watches: list[tuple[str, dict[str, str]]] = attrs.field(factory=list, init=False)
    _closing: bool = attrs.field(default=False, init=False)

    _routes: dict[Any, kmock.Response] = attrs.field(factory=dict, init=False)

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        handlers = {
            kmock.action.LIST: self._serve_list,
            kmock.action.WATCH: self._serve_watch,
            kmock.action.FETCH: self._serve_fetch,
            kmock.action.CREATE: self._serve_create,
            kmock.action.UPDATE: self._serve_patch,
            kmock.action.DELETE: self._serve_delete,
            kmock.method.PUT: self._serve_put,
        }
        self._routes = {key: kmock.Response(payload=fn) for key, fn in handlers.items()}  # type: ignore[arg-type]

    async def _handle(self, request: kmock.Request) -> Any:
        """Resource requests go straight to the store; discovery and anything else through kmock's DSL.

        kmock matches every request against every recorded request (``request in view``), which is
        quadratic in the request count: 300 creates took 50 s. The store does not need the DSL.
        """
        res = request.resource
        if res is not None and res.plural and res.version is not None:
            key = kmock.method.PUT if request.method == kmock.method.PUT and request.name else request.action
            route = self._routes.get(key)
            if route is not None:
                return await route(request)
        return await super()._handle(request)

    # ------------------------------------------------------------------ test helpers

    def add_crd(self, group: str, version: str, plural: str, kind: str, *, status: bool = True) -> None:
        self.resources[f"{group}/{version}/{plural}"] = kmock.ResourceInfo(
            kind=kind,
            namespaced=True,
            singular=kind.lower(),
            verbs={"get", "list", "watch", "create", "update", "patch", "delete"},
            subresources={"status"} if status else set(),
        )

    def fail(self, method: str, plural: str, status: int = 500) -> None:
        """Make every ``method`` request on ``plural`` fail, as a broken API server would, until ``heal()``."""
        self._faults.append((method.upper(), plural, status))

    def close_watches(self) -> None:
        """End every open watch stream, so the HTTP server can shut down without waiting for clients."""
        self._closing = True
        if self._wake is not None:
            self._wake.set()

    def heal(self) -> None:
        self._faults.clear()

    def find(self, plural: str, namespace: str | None = None) -> list[dict[str, Any]]:
        """Live objects of one resource, for assertions."""
        return [
            copy.deepcopy(o)
            for (_, _, p, ns, _), o in sorted(self.objects.items(), key=lambda kv: str(kv[0]))
            if p == plural and (namespace is None or ns == namespace)
        ]

    def get_object(self, plural: str, namespace: str | None, name: str) -> dict[str, Any] | None:
        for (_, _, p, ns, n), o in self.objects.items():
            if p == plural and ns == namespace and n == name:
                return copy.deepcopy(o)
        return None

    async def put_object(self, plural: str, obj: dict[str, Any]) -> dict[str, Any]:
        """Create or merge an object from the test side (status included, as a kubelet would write it),
        bypassing HTTP and the request counters but emitting watch events."""
        res = next(r for r in self.resources if r.plural == plural and r.group is not None)
        key = self._key(res, obj["metadata"].get("namespace"), obj["metadata"]["name"])
        if key in self.objects:
            return self._store(key, "MODIFIED", merge_patch(self.objects[key], obj))
        return self._create(res, key, obj, keep_status=True)

    async def delete_object(self, plural: str, namespace: str | None, name: str) -> None:
        for key in list(self.objects):
            if key[2] == plural and key[3] == namespace and key[4] == name:
                self._delete(key)

    # ------------------------------------------------------------------ bookkeeping

    @staticmethod
    def _key(resource: Any, namespace: str | None, name: str) -> Key:
        return (resource.group or "", resource.version or "", resource.plural or "", namespace, name)

    def _info(self, resource: Any) -> kmock.ResourceInfo:
        try:
            return self.resources[resource]
        except KeyError:
            raise kmock.KubernetesResourceNotFoundError() from None

    def _has_status(self, resource: Any) -> bool:
        return "status" in self._info(resource).subresources

    def _emit(self, key: Key, kind: str, obj: dict[str, Any]) -> None:
        rv = int(obj["metadata"]["resourceVersion"])
        self._log.append((rv, kind, key[0], key[2], copy.deepcopy(obj)))
        if self._wake is not None:
            self._wake.set()
        self._wake = asyncio.Event()

    def _next_rv(self) -> str:
        self._last_rv = next(self._rv)
        return str(self._last_rv)

    def _store(self, key: Key, kind: str, obj: dict[str, Any]) -> dict[str, Any]:
        obj["metadata"]["resourceVersion"] = self._next_rv()
        self.objects[key] = obj
        self._emit(key, kind, obj)
        meta = obj["metadata"]
        if meta.get("deletionTimestamp") and not meta.get("finalizers") and not meta.get("deletionGracePeriodSeconds"):
            self._delete(key)
        return obj

    def _set_owners(self, key: Key, obj: dict[str, Any], owners: fields.Owners) -> None:
        """Record who owns which fields of ``obj`` and show it in ``metadata.managedFields``."""
        meta = obj["metadata"]
        meta.pop("managedFields", None)
        if owners:
            self._owners[key] = owners
            meta["managedFields"] = fields.managed_fields(owners, obj["apiVersion"])
        else:
            self._owners.pop(key, None)

    def _create(
        self,
        resource: Any,
        key: Key,
        body: dict[str, Any],
        keep_status: bool = False,
        manager: str | None = None,
        owners: fields.Owners | None = None,
    ) -> dict[str, Any]:
        """``manager`` owns every field (a create is an Update); ``owners`` when an apply created it."""
        info = self._info(resource)
        obj = copy.deepcopy(body)
        meta = obj.setdefault("metadata", {})
        meta.pop("managedFields", None)
        if not meta.get("name") and meta.get("generateName"):
            meta["name"] = meta["generateName"] + "".join(random.choices(string.ascii_lowercase + string.digits, k=5))
            key = (*key[:4], meta["name"])
        if key in self.objects:
            raise _conflict(f'{resource.plural} "{key[4]}" already exists', "AlreadyExists")
        if key[3] is not None:
            meta["namespace"] = key[3]
        meta["uid"] = f"00000000-0000-4000-8000-{next(self._uids):012d}"
        meta["generation"] = 1
        meta["creationTimestamp"] = _now()
        obj["apiVersion"] = f"{resource.group}/{resource.version}" if resource.group else resource.version
        obj["kind"] = info.kind
        if self._has_status(resource) and not keep_status:
            obj.pop("status", None)
        if owners is None and manager is not None:
            owners = fields.update({}, None, obj, manager, "", _now())
        self._set_owners(key, obj, owners or {})
        return self._store(key, "ADDED", obj)

    def _update(
        self,
        resource: Any,
        key: Key,
        new: dict[str, Any],
        subresource: str | None,
        manager: str | None = None,
        owners: fields.Owners | None = None,
    ) -> dict[str, Any]:
        """Apply the subresource rules, field ownership, generation and no-op detection to a proposed new
        object. ``manager`` takes the fields it changed (an Update); ``owners`` is an apply's result; with
        neither (a test playing a controller) ownership stays as it was."""
        old = self.objects[key]
        new = copy.deepcopy(new)
        if self._has_status(resource):
            if subresource == "status":
                new = {**copy.deepcopy(old), "status": new.get("status")}
                if new["status"] is None:
                    new.pop("status")
            else:
                new.pop("status", None)
                if "status" in old:
                    new["status"] = copy.deepcopy(old["status"])
        meta = new.setdefault("metadata", {})
        for fixed in ("uid", "creationTimestamp", "namespace", "name", "generation", "resourceVersion"):
            if fixed in old["metadata"]:
                meta[fixed] = old["metadata"][fixed]
        new["apiVersion"], new["kind"] = old["apiVersion"], old["kind"]
        meta.pop("managedFields", None)
        if owners is None and manager is not None:
            owners = fields.update(self._owners.get(key, {}), old, new, manager, subresource or "", _now())
        if owners is not None:
            self._set_owners(key, new, owners)
        elif "managedFields" in old["metadata"]:
            meta["managedFields"] = copy.deepcopy(old["metadata"]["managedFields"])
        if old["metadata"].get("deletionTimestamp"):
            meta["deletionTimestamp"] = old["metadata"]["deletionTimestamp"]
            if set(meta.get("finalizers") or []) - set(old["metadata"].get("finalizers") or []):
                raise kmock.KubernetesError(
                    status=422,
                    reason="Forbidden",
                    message="no new finalizers can be added if the object is being deleted",
                )
        if new == old:
            return old  # a no-op write: no new resourceVersion, no watch event, like the real server
        spec_old = {k: v for k, v in old.items() if k not in ("metadata", "status")}
        spec_new = {k: v for k, v in new.items() if k not in ("metadata", "status")}
        if spec_old != spec_new:
            meta["generation"] = int(old["metadata"].get("generation", 1)) + 1
        return self._store(key, "MODIFIED", new)

    def _delete(self, key: Key, grace: int | None = None) -> dict[str, Any]:
        obj = self.objects[key]
        meta = obj["metadata"]
        if key[2] == "pods" and (obj.get("spec") or {}).get("nodeName") and grace != 0:
            # Graceful pod deletion: a pod bound to a node stays Terminating until its kubelet confirms
            # (no kubelet runs here, so only a force delete, gracePeriodSeconds 0, removes it).
            if not meta.get("deletionTimestamp"):
                new = copy.deepcopy(obj)
                new["metadata"]["deletionTimestamp"] = _now()
                new["metadata"]["deletionGracePeriodSeconds"] = grace or 30
                return self._store(key, "MODIFIED", new)
            return obj
        if meta.get("finalizers"):
            if not meta.get("deletionTimestamp"):
                new = copy.deepcopy(obj)
                new["metadata"]["deletionTimestamp"] = _now()
                return self._store(key, "MODIFIED", new)
            return obj
        del self.objects[key]
        self._owners.pop(key, None)
        gone = copy.deepcopy(obj)
        gone["metadata"]["resourceVersion"] = self._next_rv()
        self._emit(key, "DELETED", gone)
        if self.gc:
            self._collect(meta["uid"])
        return gone

    def _collect(self, uid: str) -> None:
        """Background-cascade garbage collection: delete dependents whose owners are all gone."""
        alive = {o["metadata"]["uid"] for o in self.objects.values()}
        for key, obj in list(self.objects.items()):
            refs = obj["metadata"].get("ownerReferences") or []
            if key in self.objects and any(r.get("uid") == uid for r in refs):
                if not any(r.get("uid") in alive for r in refs):
                    self._delete(key)

    def _check_fault(self, method: str, plural: str | None) -> None:
        for m, p, status in self._faults:
            if m == method and p == plural:
                raise kmock.KubernetesError(status=status, reason="InternalError", message="injected fault")

    def _pre(self, request: kmock.Request) -> None:
        plural = request.resource.plural if request.resource else "?"
        method = str(request.method.value if request.method else "?")
        self.counters.add("WATCH" if request.action == kmock.action.WATCH else method, plural or "?")
        self._check_fault(method, plural)

    def _matching(self, request: kmock.Request) -> list[dict[str, Any]]:
        params = request.params
        out = []
        for key, obj in self.objects.items():
            if self._key(request.resource, key[3], key[4])[:3] != key[:3]:
                continue
            if request.namespace is not None and key[3] != request.namespace:
                continue
            if request.name is not None and key[4] != request.name:
                continue
            if not _selector_matches(params.get("labelSelector"), obj["metadata"].get("labels") or {}):
                continue
            if not _field_matches(params.get("fieldSelector"), obj):
                continue
            out.append(obj)
        return out

    def _find_key(self, request: kmock.Request) -> Key:
        assert request.name is not None
        key = self._key(request.resource, request.namespace, request.name)
        self._info(request.resource)
        if key not in self.objects:
            raise _not_found(f'{request.resource.plural if request.resource else "?"} "{request.name}"')
        return key

    # ------------------------------------------------------------------ verbs

    async def _serve_list(self, request: kmock.Request) -> dict[str, Any]:
        self._pre(request)
        info = self._info(request.resource)
        items = [copy.deepcopy(o) for o in self._matching(request)]
        return {
            "apiVersion": "v1",
            "kind": f"{info.kind}List",
            "metadata": {"resourceVersion": str(self._last_rv)},
            "items": items,
        }

    async def _serve_watch(self, request: kmock.Request) -> AsyncIterator[Any]:
        self._pre(request)
        self._info(request.resource)
        yield b""
        params = request.params
        self.watches.append((str(request.resource.plural if request.resource else ""), dict(params)))
        since = params.get("resourceVersion")
        timeout = float(params["timeoutSeconds"]) if params.get("timeoutSeconds") else None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout if timeout else None
        if since in (None, "", "0"):
            pos = len(self._log)
            for obj in self._matching(request):
                yield {"type": "ADDED", "object": copy.deepcopy(obj)}
        else:
            pos = next((i for i, e in enumerate(self._log) if e[0] > int(since)), len(self._log))
        res = request.resource
        assert res is not None
        while True:
            while pos < len(self._log):
                _, kind, group, plural, obj = self._log[pos]
                pos += 1
                if group != (res.group or "") or plural != res.plural:
                    continue
                meta = obj["metadata"]
                if request.namespace is not None and meta.get("namespace") != request.namespace:
                    continue
                if request.name is not None and meta.get("name") != request.name:
                    continue
                if not _selector_matches(params.get("labelSelector"), meta.get("labels") or {}):
                    continue
                if not _field_matches(params.get("fieldSelector"), obj):
                    continue
                yield {"type": kind, "object": obj}
            if self._closing:
                return
            if self._wake is None:
                self._wake = asyncio.Event()
            wake = self._wake
            remaining = None if deadline is None else deadline - loop.time()
            if remaining is not None and remaining <= 0:
                return
            try:
                await asyncio.wait_for(wake.wait(), remaining)
            except TimeoutError:
                return

    async def _serve_fetch(self, request: kmock.Request) -> dict[str, Any]:
        self._pre(request)
        return copy.deepcopy(self.objects[self._find_key(request)])

    async def _serve_create(self, request: kmock.Request) -> dict[str, Any]:
        self._pre(request)
        body = request.data or {}
        name = (body.get("metadata") or {}).get("name") or ""
        ns = request.namespace or (body.get("metadata") or {}).get("namespace")
        key = self._key(request.resource, ns, name)
        return copy.deepcopy(self._create(request.resource, key, body, manager=_manager(request)))

    async def _serve_patch(self, request: kmock.Request) -> dict[str, Any]:
        self._pre(request)
        ctype = request.headers.get("Content-Type", "application/merge-patch+json").split(";")[0].strip()
        if ctype == "application/apply-patch+yaml":
            return self._serve_apply(request)
        key = self._find_key(request)
        old = self.objects[key]
        if ctype == "application/json-patch+json":
            new = json_patch(old, request.data)
        elif ctype == "application/strategic-merge-patch+json":
            new = strategic_merge_patch(old, request.data)
        elif ctype == "application/merge-patch+json":
            new = merge_patch(old, request.data)
        else:
            raise kmock.KubernetesError(status=415, reason="UnsupportedMediaType", message=ctype)
        return copy.deepcopy(self._update(request.resource, key, new, request.subresource, _manager(request)))

    def _serve_apply(self, request: kmock.Request) -> dict[str, Any]:
        """Server-side apply (``fields.apply``); creates the object when it does not exist."""
        manager = request.params.get("fieldManager")
        if not manager:
            raise kmock.KubernetesError(status=400, reason="BadRequest", message="fieldManager is required for apply")
        if request.subresource:
            raise kmock.KubernetesError(status=415, reason="UnsupportedMediaType", message="apply to a subresource")
        applied = request.data if isinstance(request.data, dict) else yaml.safe_load(request.text or "")
        if not isinstance(applied, dict) or not request.name:
            raise kmock.KubernetesError(status=400, reason="BadRequest", message="the body must be an object")
        if (applied.get("metadata") or {}).get("name", request.name) != request.name:
            raise kmock.KubernetesError(status=400, reason="BadRequest", message="the name does not match the URL")
        self._info(request.resource)
        key = self._key(request.resource, request.namespace, request.name)
        force = request.params.get("force") == "true"
        live = self.objects.get(key)
        obj, owners = fields.apply(self._owners.get(key, {}), live, applied, manager, force, _now())
        if live is None:
            obj.setdefault("metadata", {})["name"] = request.name
            return copy.deepcopy(self._create(request.resource, key, obj, owners=owners))
        return copy.deepcopy(self._update(request.resource, key, obj, None, owners=owners))

    async def _serve_put(self, request: kmock.Request) -> dict[str, Any]:
        self._pre(request)
        key = self._find_key(request)
        body = request.data or {}
        rv = (body.get("metadata") or {}).get("resourceVersion")
        if rv and rv != self.objects[key]["metadata"]["resourceVersion"]:
            raise _conflict("the object has been modified; please apply your changes to the latest version")
        return copy.deepcopy(self._update(request.resource, key, body, request.subresource, _manager(request)))

    async def _serve_delete(self, request: kmock.Request) -> dict[str, Any]:
        self._pre(request)
        grace = (request.data or {}).get("gracePeriodSeconds") if isinstance(request.data, dict) else None
        return copy.deepcopy(self._delete(self._find_key(request), grace))


def _manager(request: kmock.Request) -> str:
    """The field manager of a non-apply write: ``fieldManager``, else the user agent's product name (the
    real server's default)."""
    name = request.params.get("fieldManager")
    if name:
        return str(name)
    agent = str(request.headers.get("User-Agent") or "")
    return agent.split("/")[0].split(" ")[0] or "unknown"


def kubeconfig(url: str) -> dict[str, Any]:
    """A kubeconfig pointing at the test server, without credentials."""
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "test", "cluster": {"server": url}}],
        "users": [{"name": "test", "user": {}}],
        "contexts": [{"name": "test", "context": {"cluster": "test", "user": "test", "namespace": "default"}}],
        "current-context": "test",
    }


def events_json(server: TestApiServer) -> Iterable[str]:
    """The event log as JSON lines, for debugging a failing test."""
    for rv, kind, group, plural, obj in server._log:
        yield json.dumps({"rv": rv, "type": kind, "resource": f"{group}/{plural}", "name": obj["metadata"]["name"]})
