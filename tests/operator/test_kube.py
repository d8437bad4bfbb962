"""The operator's API client caps its requests in flight, and the jobs index keeps no managedFields."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import kopf
import pytest

from mtp_operator import handlers, kube


class _Response:
    async def __aenter__(self) -> _Response:
        return self

    async def __aexit__(self, *exc: object) -> None:
        return None

    async def json(self) -> Any:
        return {}


def test_requests_in_flight_are_capped(monkeypatch: pytest.MonkeyPatch) -> None:
    in_flight, seen = 0, []

    async def request(*args: Any, **kwargs: Any) -> _Response:
        nonlocal in_flight
        in_flight += 1
        seen.append(in_flight)
        await asyncio.sleep(0.01)
        in_flight -= 1
        return _Response()

    monkeypatch.setattr(kube.api, "request", request)

    async def burst(slots: asyncio.Semaphore | None, n: int) -> int:
        seen.clear()
        clients = [kube.Kube(kopf.OperatorSettings(), logging.getLogger("t"), slots) for _ in range(n)]
        await asyncio.gather(*(c.get(f"api/v1/namespaces/ns/configmaps/{i}") for i, c in enumerate(clients)))
        return max(seen)

    shared = asyncio.Semaphore(3)
    assert asyncio.run(burst(shared, 20)) == 3  # one semaphore shared by every Kube of the operator
    assert kube.MAX_REQUESTS_IN_FLIGHT == 32
    assert asyncio.run(burst(asyncio.Semaphore(kube.MAX_REQUESTS_IN_FLIGHT), 100)) == 32


def test_the_jobs_index_keeps_no_managed_fields() -> None:
    body = {
        "metadata": {"name": "j", "labels": {"a": "b"}, "managedFields": [{"manager": "kopf", "fieldsV1": {}}]},
        "spec": {"x": [1]},
    }
    assert handlers._snapshot(body) == {"metadata": {"name": "j", "labels": {"a": "b"}}, "spec": {"x": [1]}}
