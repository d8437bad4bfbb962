"""The collector against misbehaving loopback pods: timeouts, failures, garbage, resets, churn.

Real HTTP on 127.0.0.1 with real captured vLLM text; a fake clock makes the windows exact.
"""

from __future__ import annotations

import asyncio
import logging

import pytest
from prometheus_client import CollectorRegistry

from mtp_rollout import metric_names as mn
from mtp_rollout.collector import Collector, Target
from mtp_rollout.exporter import AcceptanceExporter
from mtp_rollout.exposition import parse
from mtp_rollout.rates import WindowFigures, counter_series, increments
from tests.rollout.conftest import fixture_text
from tests.rollout.fake_pods import EMPTY, FAIL, GARBAGE, SLOW, FakePod, serve_pods

ZERO = [fixture_text(n) for n in ("vllm_k3_zero_idle", "vllm_k3_zero_a", "vllm_k3_zero_b")]
RAND = [fixture_text(n) for n in ("vllm_k2_idle", "vllm_k2_random_a", "vllm_k2_random_b")]


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def expected(prev: str, cur: str) -> WindowFigures:
    a, _ = counter_series(parse(prev).samples)
    b, _ = counter_series(parse(cur).samples)
    return WindowFigures(1.0, increments(a, b))


async def rounds(collector: Collector, clock: Clock, targets: list[Target], n: int, step: float = 10.0) -> None:
    for _ in range(n):
        await collector.scrape(targets)
        clock.t += step


def test_two_good_pods_sum_into_one_job(caplog):
    async def main() -> None:
        clock = Clock()
        pods = {"p0": FakePod(ZERO), "p1": FakePod(RAND)}
        async with serve_pods(pods) as urls:
            targets = [Target("ns", "tiny", name, url) for name, url in urls.items()]
            c = Collector(window_s=100, timeout_s=1, clock=clock)
            await rounds(c, clock, targets, 3)
            clock.t -= 10
            fig = c.figures("ns", "tiny")
            z, r = expected(ZERO[0], ZERO[2]), expected(RAND[0], RAND[2])
            assert fig.inc.drafts == z.inc.drafts + r.inc.drafts
            assert fig.acceptance_rate == pytest.approx(
                (z.inc.accepted + r.inc.accepted) / (z.inc.draft_tokens + r.inc.draft_tokens)
            )
            assert fig.seconds == pytest.approx(20.0)

    with caplog.at_level(logging.INFO):
        asyncio.run(main())
    assert "joined" in caplog.text


@pytest.mark.parametrize("bad", [SLOW, FAIL, GARBAGE, EMPTY])
def test_bad_pod_costs_only_itself(bad, caplog):
    async def main() -> None:
        clock = Clock()
        pods = {"good": FakePod(ZERO), "bad": FakePod([ZERO[0], bad])}
        async with serve_pods(pods) as urls:
            targets = [Target("ns", "tiny", name, url) for name, url in urls.items()]
            c = Collector(window_s=100, timeout_s=0.5, clock=clock)
            reports = []
            for _ in range(3):
                reports.append(await c.scrape(targets))
                clock.t += 10
            assert reports[-1].errors == {("ns", "tiny"): 1} and reports[-1].ok == {("ns", "tiny"): 1}
            clock.t -= 10
            fig = c.figures("ns", "tiny")
            assert fig.acceptance_rate == pytest.approx(1.0)
            assert fig.inc.drafts == expected(ZERO[0], ZERO[2]).inc.drafts

    with caplog.at_level(logging.WARNING):
        asyncio.run(main())
    assert ("bad" in caplog.text and "failed" in caplog.text) or "no vLLM counters" in caplog.text


def test_unreachable_pod_is_a_log_line():
    async def main() -> None:
        c = Collector(timeout_s=0.5)
        report = await c.scrape([Target("ns", "tiny", "gone", "http://127.0.0.1:9/metrics")])
        assert report.errors == {("ns", "tiny"): 1}

    asyncio.run(main())


def test_restart_and_pod_churn():
    restarted = fixture_text("vllm_k3_zero_restarted")

    async def main() -> None:
        clock = Clock()
        pods = {"p0": FakePod([ZERO[1], ZERO[2], restarted]), "p1": FakePod(ZERO)}
        async with serve_pods(pods) as urls:
            t0, t1 = (Target("ns", "tiny", n, urls[n]) for n in ("p0", "p1"))
            c = Collector(window_s=1000, timeout_s=1, clock=clock)
            await c.scrape([t0])  # p0 baseline
            clock.t += 10
            await c.scrape([t0, t1])  # p0 a->b, p1 joins
            clock.t += 10
            await c.scrape([t0])  # p0 restarts, p1 leaves
            fig = c.figures("ns", "tiny")
            want = expected(ZERO[1], ZERO[2]).inc.drafts + expected(ZERO[2], restarted).inc.drafts
            assert fig.inc.resets > 0 and fig.inc.drafts == want
            assert fig.acceptance_rate == pytest.approx(1.0)

    asyncio.run(main())


def test_exporter_gauges_and_forget():
    async def main() -> None:
        clock = Clock()
        registry = CollectorRegistry()
        exporter = AcceptanceExporter(registry)
        async with serve_pods({"p0": FakePod(ZERO), "bad": FakePod([FAIL])}) as urls:
            targets = [Target("ns", "tiny", n, u) for n, u in urls.items()]
            c = Collector(window_s=100, timeout_s=1, clock=clock)
            for _ in range(3):
                report = await c.scrape(targets)
                exporter.publish("ns", "tiny", c.figures("ns", "tiny"), report)
                clock.t += 10
        labels = {"namespace": "ns", "job": "tiny"}
        assert registry.get_sample_value(mn.ACCEPTANCE_RATE, labels) == pytest.approx(1.0)
        assert registry.get_sample_value(mn.MEAN_ACCEPTANCE_LENGTH, labels) == pytest.approx(4.0)
        assert registry.get_sample_value(mn.NUM_SPECULATIVE_TOKENS, labels) == pytest.approx(3.0)
        assert registry.get_sample_value(mn.SPEEDUP_BOUND, labels) == pytest.approx(4.0)
        assert registry.get_sample_value(mn.POSITION_ACCEPTANCE_RATE, {**labels, "position": "2"}) == pytest.approx(1.0)
        assert registry.get_sample_value(mn.SCRAPE_ERRORS, labels) == 3
        assert registry.get_sample_value(mn.PODS_SCRAPED, labels) == 1
        exporter.forget("ns", "tiny")
        assert registry.get_sample_value(mn.ACCEPTANCE_RATE, labels) is None
        assert registry.get_sample_value(mn.POSITION_ACCEPTANCE_RATE, {**labels, "position": "0"}) is None

    asyncio.run(main())
