"""The operator-level periodic loop (no per-job Kopf timer or daemon): what it runs, and when."""

from __future__ import annotations

import asyncio
import datetime
from typing import Any

import pytest

from mtp_api import types as t
from mtp_operator import handlers
from mtp_operator import reconcile as reconcile_module
from mtp_operator.periodic import Periodic, paused_by_peers
from mtp_operator.settings import OperatorConfig
from tests.apiserver.harness import wait_for
from tests.operator.backends import Backend, KmockBackend

NOW = datetime.datetime(2026, 1, 1, 12, 0, tzinfo=datetime.UTC)


class FakeScraper:
    def __init__(self, key: tuple[str, str], log: list[Any]) -> None:
        self.key, self.log = key, log

    async def round(self, job: Any, pods: Any) -> None:
        self.log.append(("scrape", self.key, list(pods)))

    def close(self) -> None:
        self.log.append(("close", self.key))


def test_rounds_run_when_due_and_scrapers_of_gone_jobs_are_closed() -> None:
    clock = [0.0]
    log: list[Any] = []
    jobs: dict[tuple[str, str], Any] = {("ns", "a"): [{}], ("ns", "b"): [{}]}

    async def resync(key: tuple[str, str]) -> None:
        log.append(("resync", key))

    loop = Periodic(
        scrape_seconds=10,
        resync_seconds=30,
        jobs=jobs,
        pods={("ns", "a"): ["pod-a"]},
        typed_job=lambda key: object(),
        make_scraper=lambda key: FakeScraper(key, log),  # type: ignore[arg-type,return-value]
        resync=resync,
        clock=lambda: clock[0],
    )
    assert loop.interval == 10
    asyncio.run(loop.tick())
    assert log == []  # nothing due at the start
    clock[0] = 10
    asyncio.run(loop.tick())
    assert log == [("scrape", ("ns", "a"), ["pod-a"]), ("scrape", ("ns", "b"), [])]
    log.clear()
    del jobs[("ns", "b")]
    clock[0] = 30
    asyncio.run(loop.tick())
    assert log == [("close", ("ns", "b")), ("scrape", ("ns", "a"), ["pod-a"]), ("resync", ("ns", "a"))]


def test_a_failing_resync_does_not_stop_the_others() -> None:
    done: list[tuple[str, str]] = []

    async def resync(key: tuple[str, str]) -> None:
        if key[1] == "bad":
            raise RuntimeError("boom")
        done.append(key)

    loop = Periodic(
        scrape_seconds=0,
        resync_seconds=1,
        jobs={("ns", "bad"): [{}], ("ns", "good"): [{}]},
        pods={},
        typed_job=lambda key: None,
        make_scraper=lambda key: None,  # type: ignore[arg-type,return-value]
        resync=resync,
        clock=iter([0.0, 1.0, 1.0]).__next__,  # start, the tick, the end of the resync round
    )
    asyncio.run(loop.tick())
    assert done == [("ns", "good")]


@pytest.mark.parametrize(
    ("peers", "paused"),
    [
        ({}, False),
        ({"me": {"priority": 5, "lifetime": 60, "lastseen": "2026-01-01T11:59:30+00:00"}}, False),
        (
            {
                "me": {"priority": 5, "lifetime": 60, "lastseen": "2026-01-01T11:59:30+00:00"},
                "other": {"priority": 9, "lifetime": 60, "lastseen": "2026-01-01T11:59:30+00:00"},
            },
            True,
        ),
        (  # the higher peer stopped sending keep-alives: it is dead
            {
                "me": {"priority": 5, "lifetime": 60, "lastseen": "2026-01-01T11:59:30+00:00"},
                "other": {"priority": 9, "lifetime": 60, "lastseen": "2026-01-01T11:58:00+00:00"},
            },
            False,
        ),
        (  # two replicas with one priority: both pause, as Kopf does
            {
                "me": {"priority": 5, "lifetime": 60, "lastseen": "2026-01-01T11:59:30+00:00"},
                "twin": {"priority": 5, "lifetime": 60, "lastseen": "2026-01-01T11:59:30+00:00"},
            },
            True,
        ),
    ],
)
def test_paused_by_peers_follows_kopfs_rule(peers: dict[str, Any], paused: bool) -> None:
    assert paused_by_peers(peers, 5, NOW) is paused


def test_the_loop_resyncs_jobs_without_any_event(job: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    """activeDeadlineSeconds fires from the periodic resync alone: only reconciles that run in the loop's
    task see time pass; those that events trigger (job, children, pods) stay at the start time."""
    t0 = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)
    later = t0 + datetime.timedelta(seconds=100)
    real = handlers.reconcile

    async def at_fake_time(body: Any, observed: Any, runtime: Any, kube: Any, now: Any) -> reconcile_module.Outcome:
        task = asyncio.current_task()
        in_loop = task is not None and task.get_name() == "mtp-periodic"
        return await real(body, observed, runtime, kube, later if in_loop else t0)

    monkeypatch.setattr(handlers, "reconcile", at_fake_time)
    job["spec"]["runPolicy"] = {"activeDeadlineSeconds": 100}
    config = OperatorConfig(standalone=True, metrics_port=0, health_port=0, resync_seconds=0.5, scrape_seconds=0)
    with KmockBackend() as backend:
        backend.apply(t.PLURAL, job)
        with backend.operator(config):
            st = wait_for(lambda: _status(backend).get("state") == "Failed" and _status(backend))
        assert {c["type"]: c["reason"] for c in st["conditions"]}["Failed"] == "DeadlineExceeded"
        assert st["startTime"] == "2026-01-01T00:00:00Z"  # set by an event-driven reconcile, at t0
        body = backend.get(t.PLURAL, "demo")
        assert body is not None and "finalizers" not in body["metadata"]


def _status(backend: Backend) -> dict[str, Any]:
    return dict((backend.get(t.PLURAL, "demo") or {}).get("status") or {})


def test_jitter_is_stable_in_range_and_spread() -> None:
    from mtp_operator.periodic import jitter

    keys = [(f"team-{i % 10}", f"job-{i:04d}") for i in range(1000)]
    offsets = [jitter(k, 7.5) for k in keys]
    assert offsets == [jitter(k, 7.5) for k in keys]  # the same every round
    assert all(0 <= x < 7.5 for x in offsets)
    # Spread over the span: every tenth of it holds 100 +- 40 of the 1000 jobs.
    counts = [sum(1 for x in offsets if b * 0.75 <= x < (b + 1) * 0.75) for b in range(10)]
    assert all(60 <= c <= 140 for c in counts), counts


def test_a_round_that_overran_is_not_followed_by_another_at_once() -> None:
    """A resync of every job that takes longer than the interval (a burst of creates) is followed by a
    full interval, not by another resync straight away; an overrunning scrape round by the spread."""
    clock = [0.0]

    async def resync(key: tuple[str, str]) -> None:
        clock[0] += 4.0  # each job's reconcile waits 4 s for the API: 8 s for both, past the 5 s interval

    loop = Periodic(
        scrape_seconds=10,
        resync_seconds=5,
        jobs={("ns", "a"): [{}], ("ns", "b"): [{}]},
        pods={},
        typed_job=lambda key: None,
        make_scraper=lambda key: None,  # type: ignore[arg-type,return-value]
        resync=resync,
        clock=lambda: clock[0],
    )
    clock[0] = 10.0
    asyncio.run(loop.tick())  # scrape (no typed jobs: instant) and resync, 10 -> 18
    assert clock[0] == 18.0
    assert loop._next_resync == 23.0  # the end + 5, not the start + 5 (15: already past)
    assert loop._next_scrape == 20.0  # start + 10: the scrape round itself did not overrun
