"""The operator's own API client (public Kopf credentials only): typed errors, one re-login on 401, a cap on
requests in flight; and the jobs index keeps no managedFields."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import kopf
import pytest

from mtp_operator import handlers, kube


class _Response:
    def __init__(self, status: int = 200, text: str = "{}") -> None:
        self.status, self._text = status, text

    async def __aenter__(self) -> _Response:
        return self

    async def __aexit__(self, *exc: object) -> None:
        return None

    async def text(self) -> str:
        return self._text


class _Session:
    """Answers from a script of (status, body) and records (method, url, Authorization header) per request."""

    def __init__(self, script: list[tuple[int, str]], token: str, delay: float = 0.0) -> None:
        self.script, self.token, self.delay = script, token, delay
        self.calls: list[tuple[str, str, str]] = []
        self.in_flight, self.seen = 0, [0]
        self.closed = False

    def request(self, method: str, url: str, **kw: Any) -> Any:
        session = self

        class _Ctx:
            async def __aenter__(self) -> _Response:
                session.in_flight += 1
                session.seen.append(session.in_flight)
                session.calls.append((method, url, session.token))
                await asyncio.sleep(session.delay)
                session.in_flight -= 1
                status, text = session.script.pop(0) if session.script else (200, "{}")
                return _Response(status, text)

            async def __aexit__(self, *exc: object) -> None:
                return None

        return _Ctx()

    async def close(self) -> None:
        self.closed = True


def _client(monkeypatch: pytest.MonkeyPatch, sessions: list[_Session], max_in_flight: int = 32) -> kube.ApiClient:
    logins = iter(range(100))

    def login(**_: Any) -> kopf.ConnectionInfo:
        return kopf.ConnectionInfo(server="https://k8s.example:6443/", token=f"token-{next(logins)}")

    client = kube.ApiClient(login, logging.getLogger("t"), max_in_flight)
    made = iter(sessions)
    monkeypatch.setattr(kube.aiohttp, "ClientSession", lambda **kw: next(made))
    return client


async def _burst(kubes: list[kube.Kube]) -> None:
    await asyncio.gather(*(k.get(f"api/v1/namespaces/ns/configmaps/{i}") for i, k in enumerate(kubes)))


def test_requests_in_flight_are_capped(monkeypatch: pytest.MonkeyPatch) -> None:
    """One client (one session) for the whole operator; never more than max_in_flight requests at once."""
    for cap, n in ((3, 20), (kube.MAX_REQUESTS_IN_FLIGHT, 100)):
        session = _Session([], "t", delay=0.01)
        client = _client(monkeypatch, [session], cap)
        kubes = [kube.Kube(client, logging.getLogger("t")) for _ in range(n)]
        asyncio.run(_burst(kubes))
        assert max(session.seen) == cap and len(session.calls) == n
    assert kube.MAX_REQUESTS_IN_FLIGHT == 32


def test_errors_are_typed_and_a_401_logs_in_again_once(monkeypatch: pytest.MonkeyPatch) -> None:
    first = _Session([(404, '{"message": "configmaps \\"x\\" not found"}'), (409, "{}"), (422, "bad"), (401, "")], "a")
    second = _Session([(200, '{"ok": true}'), (401, "")], "b")
    third = _Session([(401, "")], "c")
    client = _client(monkeypatch, [first, second, third])
    k = kube.Kube(client, logging.getLogger("t"))

    async def calls() -> list[object]:
        out: list[object] = []
        for path in ("api/v1/namespaces/ns/configmaps/x",) * 4 + ("api/v1/namespaces/ns/configmaps/y",):
            try:
                out.append(await k.get(path))
            except kube.ApiError as exc:
                out.append((type(exc).__name__, exc.status))
        return out

    got = asyncio.run(calls())
    assert got == [
        ("NotFound", 404),
        ("Conflict", 409),
        ("ApiError", 422),
        {"ok": True},  # 401 -> a new login (token-1), the same request again
        ("ApiError", 401),  # 401, a new login, 401 again: raised, not retried for ever
    ]
    assert first.closed and first.calls[0][1] == "https://k8s.example:6443/api/v1/namespaces/ns/configmaps/x"
    assert [c[2] for c in (*first.calls, *second.calls)] == ["a"] * 4 + ["b"] * 2
    assert (len(first.calls), len(second.calls), len(third.calls)) == (4, 2, 1)


def test_no_credentials_is_an_error_not_a_hang() -> None:
    client = kube.ApiClient(lambda **_: None, logging.getLogger("t"))
    with pytest.raises(kube.ApiError, match="no credentials"):
        asyncio.run(client.request("get", "api/v1/namespaces"))


def test_the_jobs_index_keeps_no_managed_fields() -> None:
    body = {
        "metadata": {"name": "j", "labels": {"a": "b"}, "managedFields": [{"manager": "kopf", "fieldsV1": {}}]},
        "spec": {"x": [1]},
    }
    assert handlers._snapshot(body) == {"metadata": {"name": "j", "labels": {"a": "b"}}, "spec": {"x": [1]}}
