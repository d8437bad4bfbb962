"""Field ownership and server-side apply, as the real API server keeps them in ``metadata.managedFields``.

Each manager (a ``fieldManager`` name, an operation, Apply or Update, and a subresource) owns a set of
field paths. A path is a tuple of the tokens ``fieldsV1`` uses: ``f:<key>`` for a map key,
``k:{"<key>":<value>}`` for an element of a keyed list (containers by name, ports by containerPort, ...);
any other list is atomic, one leaf. Every map and keyed-list element on the way is a path too (``"."``
in fieldsV1), so a map the applier stops sending goes away with its keys.

- **Update** (create, PUT, merge/JSON/strategic patch): the writer takes every path whose value it
  changed or added, and nobody keeps a path that no longer exists.
- **Apply** (``application/apply-patch+yaml``): the applied configuration is merged into the object
  (maps by key, keyed lists by key, atomic lists and scalars replaced), and its paths become the
  applier's set. A path another manager owns with a different value is a conflict (409) unless
  ``force=true``, which takes it from them; an equal value is shared. Paths the applier owned before
  and no longer sends are removed from the object unless another manager still owns them or something
  under them. Applying to a missing object creates it.

Simplified: no schema, so which lists are keyed comes from ``LIST_KEYS``, and keys are single fields
(the real server keys ports by port and protocol).
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterable, Mapping
from typing import Any

import kmock

Path = tuple[str, ...]
FieldSet = frozenset[Path]
Manager = tuple[str, str, str]  # fieldManager, operation (Apply | Update), subresource ("" | "status")
Owners = dict[Manager, tuple[FieldSet, str]]  # the set and the time it last changed

APPLY, UPDATE = "Apply", "Update"

# Keyed lists (``+listType=map`` in k8s.io/api) and the field that keys them, first match wins.
LIST_KEYS: dict[str, tuple[str, ...]] = {
    "containers": ("name",),
    "initContainers": ("name",),
    "env": ("name",),
    "ports": ("containerPort", "port"),
    "volumes": ("name",),
    "volumeMounts": ("mountPath",),
    "imagePullSecrets": ("name",),
    "ownerReferences": ("uid",),
    "conditions": ("type",),
}
# Metadata the server owns: never in anybody's set.
SERVER_METADATA = frozenset(
    {
        "name",
        "namespace",
        "uid",
        "resourceVersion",
        "generation",
        "creationTimestamp",
        "managedFields",
        "deletionTimestamp",
        "deletionGracePeriodSeconds",
    }
)
_MISSING = object()


def list_key(field: str | None, items: Iterable[Any]) -> str | None:
    """The key of a keyed list, or None for an atomic one."""
    items = list(items)
    for key in LIST_KEYS.get(field or "", ()):
        if items and all(isinstance(i, dict) and key in i for i in items):
            return key
    return None


def _item_token(key: str, item: Mapping[str, Any]) -> str:
    return "k:" + json.dumps({key: item[key]}, separators=(",", ":"))


def paths(obj: Mapping[str, Any] | None, status: bool = False) -> set[Path]:
    """Every path of ``obj``: the status only (``status``) or everything but the status."""
    out: set[Path] = set()
    for k, v in (obj or {}).items():
        if k in ("apiVersion", "kind") or (k == "status") != status or v is None:
            continue
        if k == "metadata":
            v = {mk: mv for mk, mv in v.items() if mk not in SERVER_METADATA}
        _walk(v, ("f:" + k,), k, out)
    return out


def _walk(value: Any, path: Path, field: str, out: set[Path]) -> None:
    """A keyed list is not a path of its own, only its elements are (an empty one belongs to nobody)."""
    if value is None:
        return
    if isinstance(value, list) and (key := list_key(field, value)) is not None:
        for item in value:
            token = (*path, _item_token(key, item))
            out.add(token)
            for k, v in item.items():
                _walk(v, (*token, "f:" + k), k, out)
        return
    out.add(path)
    if isinstance(value, dict):
        for k, v in value.items():
            _walk(v, (*path, "f:" + k), k, out)


def _find(items: list[Any], token: str) -> int | None:
    wanted = json.loads(token[2:])
    for i, item in enumerate(items):
        if isinstance(item, dict) and all(item.get(k) == v for k, v in wanted.items()):
            return i
    return None


def get(obj: Any, path: Path) -> Any:
    node = obj
    for token in path:
        if token.startswith("f:") and isinstance(node, dict) and token[2:] in node:
            node = node[token[2:]]
        elif token.startswith("k:") and isinstance(node, list) and (i := _find(node, token)) is not None:
            node = node[i]
        else:
            return _MISSING
    return node


def _is_node(value: Any, field: str) -> bool:
    """A map or a keyed list: owned through its children, not as one value."""
    return isinstance(value, dict) or (isinstance(value, list) and list_key(field, value) is not None)


def delete(obj: Any, path: Path) -> None:
    parent = get(obj, path[:-1])
    token = path[-1]
    if token.startswith("f:") and isinstance(parent, dict):
        parent.pop(token[2:], None)
    elif token.startswith("k:") and isinstance(parent, list) and (i := _find(parent, token)) is not None:
        parent.pop(i)


def merge(live: Any, applied: Any, field: str | None = None) -> Any:
    """The applied configuration over the live object: maps and keyed lists merged, the rest replaced."""
    if isinstance(applied, dict) and isinstance(live, dict):
        out = dict(live)
        for k, v in applied.items():
            out[k] = merge(live[k], v, k) if k in live else copy.deepcopy(v)
        return out
    if isinstance(applied, list) and isinstance(live, list) and (key := list_key(field, live + applied)) is not None:
        out_list = [copy.deepcopy(x) for x in live]
        for item in applied:
            i = _find(out_list, _item_token(key, item))
            if i is None:
                out_list.append(copy.deepcopy(item))
            else:
                out_list[i] = merge(out_list[i], item)
        return out_list
    return copy.deepcopy(applied)


def _differs(a: Any, b: Any, path: Path) -> bool:
    va, vb = get(a, path), get(b, path)
    if va is _MISSING or vb is _MISSING:
        return va is not vb
    field = path[-1][2:] if path[-1].startswith("f:") else ""
    if _is_node(vb, field):
        return False  # a map or an element: its children say what changed
    return bool(va != vb)


def update(owners: Owners, old: Any, new: Any, manager: str, subresource: str, now: str) -> Owners:
    """Ownership after a non-apply write of ``new`` over ``old`` by ``manager``."""
    status = subresource == "status"
    new_paths = paths(new, status)
    removed = paths(old, status) - new_paths
    changed = {p for p in new_paths if _differs(old, new, p)}
    out: Owners = {}
    for m, (fields, when) in owners.items():
        kept = fields if (m[2] == "status") != status else fields - removed - changed
        if kept:
            out[m] = (frozenset(kept), when if kept == fields else now)
    me = (manager, UPDATE, subresource)
    if changed:
        mine = out.get(me, (frozenset(), now))[0] | changed
        out[me] = (frozenset(mine), now)
    return out


def apply(
    owners: Owners, live: Mapping[str, Any] | None, applied: Mapping[str, Any], manager: str, force: bool, now: str
) -> tuple[dict[str, Any], Owners]:
    """Server-side apply of ``applied`` by ``manager`` to ``live`` (None: create): the new object and owners."""
    me = (manager, APPLY, "")
    base: dict[str, Any] = copy.deepcopy(dict(live or {}))
    new_set = paths(applied)
    others = {m: v for m, v in owners.items() if m != me}
    conflicts: list[str] = []
    for m, (fields, _when) in list(others.items()):
        if m[2] == "status":
            continue
        clash = {p for p in new_set & fields if _differs(base, applied, p)}
        if clash and not force:
            conflicts += [f'conflict with "{m[0]}": .{".".join(t[2:] for t in sorted(clash)[0])}']
        elif clash:
            rest = fields - clash
            others[m] = (frozenset(rest), now)
    if conflicts:
        raise kmock.KubernetesError(
            status=409,
            reason="Conflict",
            message=f"Apply failed with {len(conflicts)} conflicts: {'; '.join(conflicts)}",
        )
    obj = merge(base, {k: v for k, v in applied.items() if k != "status"})
    kept = {p for fields, _ in others.values() for p in fields}
    old_set = owners.get(me, (frozenset(), now))[0]
    for p in sorted(old_set - new_set, key=len, reverse=True):
        if not any(q[: len(p)] == p for q in kept):
            delete(obj, p)
            if p[-1].startswith("k:") and get(obj, p[:-1]) == []:
                delete(obj, p[:-1])  # the last element of a keyed list went: so does the list
    out: Owners = {m: v for m, v in others.items() if v[0]}
    previous = owners.get(me)
    out[me] = previous if previous is not None and previous[0] == new_set else (frozenset(new_set), now)
    return obj, out


def fields_v1(fields: Iterable[Path]) -> dict[str, Any]:
    """The set as ``fieldsV1``: nested tokens, ``"."`` where the map or element itself is owned."""
    tree: dict[str, Any] = {}
    owned = set(fields)
    for path in sorted(owned):
        node = tree
        for token in path:
            node = node.setdefault(token, {})

    def mark(node: dict[str, Any], path: Path) -> None:
        for token, child in node.items():
            if token == ".":
                continue
            sub = (*path, token)
            if child and sub in owned and len(sub) > 1:
                child["."] = {}
            mark(child, sub)

    mark(tree, ())
    return tree


def managed_fields(owners: Owners, api_version: str) -> list[dict[str, Any]]:
    out = []
    for (manager, operation, subresource), (fields, when) in sorted(owners.items()):
        entry: dict[str, Any] = {
            "manager": manager,
            "operation": operation,
            "apiVersion": api_version,
            "time": when,
            "fieldsType": "FieldsV1",
            "fieldsV1": fields_v1(fields),
        }
        if subresource:
            entry["subresource"] = subresource
        out.append(entry)
    return out
