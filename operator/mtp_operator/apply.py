"""Make the children match the desired objects: create what is missing, patch what drifted, nothing else.

"Drifted" means the ``mtp.io/spec-hash`` annotation differs from the desired one. What the operator
last wrote is remembered in ``written`` until the watch shows it, so a reconcile that runs before
the watch event arrives does not write again. A 409 on create (the child exists but has not been
seen yet, e.g. right after an operator restart) is answered with a patch, never a second object.

Children lose fields: every write records what it sent in ``mtp.io/last-applied`` (kubectl's client-side
apply), and the next patch nulls what was sent then and is not sent now. A workload (StatefulSet,
Deployment) whose generation moved past the operator's own last write was edited by hand and is patched
back. Children that are no longer desired are deleted (``prune_children``).
"""

from __future__ import annotations

import json
from collections.abc import MutableMapping, Sequence
from typing import Any

from mtp_operator import metrics, names
from mtp_operator.kube import Conflict, Kube
from mtp_operator.observed import ChildKey, ChildState, Observed

Written = MutableMapping[ChildKey, str]


def desired_hash(obj: dict[str, Any]) -> str:
    return str(obj["metadata"]["annotations"][names.ANNOTATION_SPEC_HASH])


def _patch_body(obj: dict[str, Any]) -> dict[str, Any]:
    """Everything the operator owns in the object, with what it sends recorded in ``mtp.io/last-applied``;
    a merge patch replaces lists such as containers."""
    body = {k: v for k, v in obj.items() if k not in ("apiVersion", "kind", "status")}
    body["metadata"] = {**body["metadata"], "annotations": dict(body["metadata"].get("annotations") or {})}
    body["metadata"]["annotations"][names.ANNOTATION_LAST_APPLIED] = json.dumps(
        {k: v for k, v in obj.items() if k not in ("apiVersion", "kind", "status")},
        sort_keys=True,
        separators=(",", ":"),
    )
    return body


def removals(last: Any, new: Any) -> Any:
    """``new`` with a null for every mapping key that ``last`` had and ``new`` has not (recursively): a merge
    patch that removes the fields the operator stopped sending. Lists are replaced whole by a merge patch."""
    if not isinstance(last, dict) or not isinstance(new, dict):
        return new
    out = {k: removals(last.get(k), v) for k, v in new.items()}
    out.update({k: None for k in last if k not in new})
    return out


def _patch(obj: dict[str, Any], seen: ChildState | None) -> dict[str, Any]:
    body = _patch_body(obj)
    if seen is None or not seen.last_applied:
        return body
    try:
        last = json.loads(seen.last_applied)
    except ValueError:
        return body
    return dict(removals(last, body))


def settle_written(observed: Observed, written: Written) -> None:
    """Forget remembered writes once the watch shows them."""
    for key, h in list(written.items()):
        seen = observed.children.get(key)
        if seen is not None and seen.spec_hash == h:
            del written[key]


def _generation(response: Any) -> int | None:
    meta = response.get("metadata") if isinstance(response, dict) else None
    gen = (meta or {}).get("generation")
    return int(gen) if gen is not None else None


async def apply_children(
    kube: Kube,
    namespace: str,
    desired: Sequence[dict[str, Any]],
    observed: Observed,
    written: Written,
    generations: MutableMapping[ChildKey, int] | None = None,
) -> list[str]:
    """Returns the actions taken, e.g. ``["create StatefulSet/x"]``; empty when all is in place.

    ``generations`` is the generation of each workload after the operator's own last write: a workload
    seen at a later generation was edited by someone else, and is patched back (its own fields)."""
    settle_written(observed, written)
    generations = {} if generations is None else generations
    actions: list[str] = []
    for obj in desired:
        kind, name = obj["kind"], obj["metadata"]["name"]
        key = (kind, name)
        want = desired_hash(obj)
        seen = observed.child(kind, name)
        have = written.get(key, seen.spec_hash if seen is not None else None)
        edited = (
            seen is not None
            and seen.generation is not None
            and key not in written
            and seen.generation > generations.setdefault(key, seen.generation)
        )
        if seen is None and key not in written:
            try:
                response = await kube.create(namespace, {**obj, **_patch_body(obj)})
                metrics.CHILD_WRITES.labels(kind, "create").inc()
                actions.append(f"create {kind}/{name}")
            except Conflict:
                response = await kube.merge_patch(namespace, kind, name, _patch_body(obj))
                metrics.CHILD_WRITES.labels(kind, "patch").inc()
                actions.append(f"adopt {kind}/{name}")
        elif have != want or edited:
            response = await kube.merge_patch(namespace, kind, name, _patch(obj, seen))
            metrics.CHILD_WRITES.labels(kind, "patch").inc()
            actions.append(f"patch {kind}/{name}" + (" (edited by hand: reverted)" if have == want else ""))
        else:
            continue
        written[key] = want
        gen = _generation(response)
        if gen is not None:
            generations[key] = gen
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
