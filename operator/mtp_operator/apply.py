"""Make the children match the desired objects with server-side apply, and write only when needed.

Every write is a server-side apply (``fieldManager: mtp-operator``, ``force``): the API server creates
a missing child, removes the fields the operator applied before and no longer sends, and takes back the
fields someone else changed. A child is applied when

- it is missing, or its ``mtp.io/spec-hash`` annotation differs from the desired one (the spec changed);
- or the operator's applied set in ``managedFields`` no longer covers every desired field
  (``ownership.owns``): a hand edit moved a field to another manager, or deleted it.

Otherwise nothing is sent, so an idle reconcile writes nothing. What the operator last wrote is
remembered in ``written`` until the watch shows it, so a reconcile that runs before the watch event
arrives does not write again. Children that are no longer desired are deleted (``prune_children``).
"""

from __future__ import annotations

from collections.abc import MutableMapping, Sequence
from typing import Any

from mtp_operator import metrics, names, ownership
from mtp_operator.kube import Kube
from mtp_operator.observed import ChildKey, ChildState, Observed

Written = MutableMapping[ChildKey, str]
# (resourceVersion, spec hash) of each child already found to carry every applied field.
Owned = MutableMapping[ChildKey, tuple[str, str]]


def desired_hash(obj: dict[str, Any]) -> str:
    return str(obj["metadata"]["annotations"][names.ANNOTATION_SPEC_HASH])


def settle_written(observed: Observed, written: Written) -> None:
    """Forget remembered writes once the watch shows them."""
    for key, h in list(written.items()):
        seen = observed.children.get(key)
        if seen is not None and seen.spec_hash == h:
            del written[key]


def _owned(key: ChildKey, seen: ChildState, obj: dict[str, Any], want: str, owned: Owned) -> bool:
    """Whether the operator still owns every field of ``obj``, checked once per resourceVersion."""
    if owned.get(key) == (seen.resource_version, want):
        return True
    if not ownership.owns(seen.applied_fields, obj):
        return False
    owned[key] = (seen.resource_version, want)
    return True


async def apply_children(
    kube: Kube,
    namespace: str,
    desired: Sequence[dict[str, Any]],
    observed: Observed,
    written: Written,
    owned: Owned | None = None,
) -> list[str]:
    """Returns the actions taken, e.g. ``["create StatefulSet/x"]``; empty when all is in place."""
    settle_written(observed, written)
    owned = {} if owned is None else owned
    actions: list[str] = []
    for obj in desired:
        kind, name = obj["kind"], obj["metadata"]["name"]
        key = (kind, name)
        want = desired_hash(obj)
        seen = observed.child(kind, name)
        if key in written:
            if written[key] == want:
                continue  # written, not seen yet
            action = "apply"
        elif seen is None:
            action = "create"
        elif seen.spec_hash != want:
            action = "apply"
        elif not _owned(key, seen, obj, want, owned):
            action = "apply (edited by hand: reverted)"
        else:
            continue
        await kube.apply(namespace, {k: v for k, v in obj.items() if k != "status"})
        metrics.CHILD_WRITES.labels(kind, "apply").inc()
        written[key] = want
        if seen is not None:
            # Applied over this version: until the watch shows the next one, do not check it again (a
            # reverted edit keeps its hash, so ``written`` settles at once and would not hold it back).
            owned[key] = (seen.resource_version, want)
        actions.append(f"{action} {kind}/{name}")
    return actions


async def prune_children(
    kube: Kube, namespace: str, desired: Sequence[dict[str, Any]], observed: Observed, written: Written
) -> list[str]:
    """Delete the children of the job that are no longer desired (a rollout removed from the spec)."""
    wanted = {(o["kind"], o["metadata"]["name"]) for o in desired}
    actions = []
    for key in sorted(set(observed.children) - wanted):
        await kube.delete(namespace, key[0], key[1])
        written.pop(key, None)
        metrics.CHILD_WRITES.labels(key[0], "delete").inc()
        actions.append(f"prune {key[0]}/{key[1]}")
    return actions
