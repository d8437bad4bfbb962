"""Does the operator still own every field it applies? Read from ``metadata.managedFields``.

With server-side apply, a hand edit of a field the operator applied (``kubectl edit``, ``patch``,
``scale``) moves that field to the editor's manager, and a field someone deleted leaves every set; both
take it out of the operator's set (``fieldManager: mtp-operator``, operation Apply). Another manager
setting the same value only shares it. So a child whose spec hash is current needs a new apply exactly
when some field of the desired object is missing from the operator's set, which this module checks
without a schema, in the encoding the API server uses (``fieldsV1``):

- a map key is ``f:<key>``; an element of a keyed list is ``k:{<key fields>}`` (containers by name,
  ports by containerPort and protocol, ...), matched against the element's own fields; an element of a
  set is ``v:<json>``;
- an empty entry ``{}`` owns its whole value: a scalar, an atomic list (args) or an atomic map
  (a Deployment's selector).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from mtp_operator import names

SERVER_METADATA = frozenset({"name", "namespace", "uid", "resourceVersion", "generation", "creationTimestamp"})


def applied_fields(managed_fields: Sequence[Mapping[str, Any]] | None) -> str | None:
    """The operator's applied set (fieldsV1) as compact JSON, for the children's index; None when it has none."""
    for entry in managed_fields or ():
        if (
            entry.get("manager") == names.FIELD_MANAGER
            and entry.get("operation") == "Apply"
            and not entry.get("subresource")
        ):
            return json.dumps(entry.get("fieldsV1") or {}, separators=(",", ":"))
    return None


def owns(fields_json: str | None, obj: Mapping[str, Any]) -> bool:
    """Whether the applied set covers every field of ``obj`` (the desired child)."""
    if fields_json is None:
        return False
    try:
        owned = json.loads(fields_json)
    except ValueError:
        return False
    for key, value in obj.items():
        if key in ("apiVersion", "kind", "status"):
            continue
        if key == "metadata":
            value = {k: v for k, v in value.items() if k not in SERVER_METADATA}
        if not _covers(owned.get("f:" + key), value):
            return False
    return True


def _covers(node: Any, value: Any) -> bool:
    if value is None:
        return True
    if not isinstance(node, dict):
        return False
    if not node:
        return True  # owned whole: a scalar, an atomic list or an atomic map
    if isinstance(value, dict):
        return all(_covers(node.get("f:" + k), v) for k, v in value.items())
    if isinstance(value, list):
        return all(
            _covers(_element(node, item), item) if isinstance(item, dict) else _in_set(node, item) for item in value
        )
    return True


def _element(node: Mapping[str, Any], item: Mapping[str, Any]) -> Any:
    """The entry of a keyed-list element: every key field the element has must match (a key field it leaves
    out, such as a port's protocol, is the server's default)."""
    for token, child in node.items():
        if token.startswith("k:"):
            try:
                key = json.loads(token[2:])
            except ValueError:
                continue
            if any(k in item for k in key) and all(item[k] == v for k, v in key.items() if k in item):
                return child
        elif token.startswith("v:") and token[2:] == json.dumps(item, separators=(",", ":")):
            return {}
    return None


def _in_set(node: Mapping[str, Any], item: Any) -> bool:
    return "v:" + json.dumps(item, separators=(",", ":")) in node
