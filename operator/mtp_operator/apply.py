"""Make the children match the desired objects: create what is missing, patch what drifted, nothing else.

"Drifted" means the ``mtp.io/spec-hash`` annotation differs from the desired one. What the operator
last wrote is remembered in ``written`` until the watch shows it, so a reconcile that runs before
the watch event arrives does not write again. A 409 on create (the child exists but has not been
seen yet, e.g. right after an operator restart) is answered with a patch, never a second object.
"""

from __future__ import annotations

from collections.abc import MutableMapping, Sequence
from typing import Any

from mtp_operator import metrics, names
from mtp_operator.kube import Conflict, Kube
from mtp_operator.observed import ChildKey, Observed

Written = MutableMapping[ChildKey, str]


def desired_hash(obj: dict[str, Any]) -> str:
    return str(obj["metadata"]["annotations"][names.ANNOTATION_SPEC_HASH])


def _patch_body(obj: dict[str, Any]) -> dict[str, Any]:
    """Everything the operator owns in the object; a merge patch replaces lists such as containers."""
    return {k: v for k, v in obj.items() if k not in ("apiVersion", "kind", "status")}


def settle_written(observed: Observed, written: Written) -> None:
    """Forget remembered writes once the watch shows them."""
    for key, h in list(written.items()):
        seen = observed.children.get(key)
        if seen is not None and seen.spec_hash == h:
            del written[key]


async def apply_children(
    kube: Kube, namespace: str, desired: Sequence[dict[str, Any]], observed: Observed, written: Written
) -> list[str]:
    """Returns the actions taken, e.g. ``["create StatefulSet/x"]``; empty when all is in place."""
    settle_written(observed, written)
    actions: list[str] = []
    for obj in desired:
        kind, name = obj["kind"], obj["metadata"]["name"]
        key = (kind, name)
        want = desired_hash(obj)
        seen = observed.child(kind, name)
        have = written.get(key, seen.spec_hash if seen is not None else None)
        if seen is None and key not in written:
            try:
                await kube.create(namespace, obj)
                metrics.CHILD_WRITES.labels(kind, "create").inc()
                actions.append(f"create {kind}/{name}")
            except Conflict:
                await kube.merge_patch(namespace, kind, name, _patch_body(obj))
                metrics.CHILD_WRITES.labels(kind, "patch").inc()
                actions.append(f"adopt {kind}/{name}")
        elif have != want:
            await kube.merge_patch(namespace, kind, name, _patch_body(obj))
            metrics.CHILD_WRITES.labels(kind, "patch").inc()
            actions.append(f"patch {kind}/{name}")
        else:
            continue
        written[key] = want
    return actions
