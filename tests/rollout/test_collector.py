"""The collector against misbehaving loopback pods: timeouts, failures, garbage, resets, churn.

Real HTTP on 127.0.0.1 with real captured vLLM text; a fake clock makes the windows exact.
Every expected figure is computed by hand from the fixtures' counter values below, never with the
collector's own ``rates`` helpers.

Counter values in the fixtures (engine 0, model_name "tiny"):

    fixture             drafts  draft_tokens  accepted  per position        generation_tokens
    k3_zero_idle             0             0         0  0 / 0 / 0                           0
    k3_zero_a               20            60        60  20 / 20 / 20                       80
    k3_zero_b               50           150       150  50 / 50 / 50                      200
    k3_zero_restarted       10            30        30  10 / 10 / 10                       40
    k2_idle                 47            94         0  0 / 0                              48
    k2_random_a            235           470         0  0 / 0                             240
    k2_random_b            373           746         3  3 / 0                             384
"""

from __future__ import annotations

import asyncio
import logging

import pytest
from prometheus_client import CollectorRegistry

from mtp_api.acceptance import Increments
from mtp_rollout.metrics import metric_names as mn
from mtp_rollout.metrics.collector import Collector, Target
from mtp_rollout.metrics.exporter import AcceptanceExporter
from tests.rollout.conftest import fixture_text
from tests.rollout.fake_pods import EMPTY, FAIL, GARBAGE, SLOW, FakePod, serve_pods

ZERO = [fixture_text(n) for n in ("vllm_k3_zero_idle", "vllm_k3_zero_a", "vllm_k3_zero_b")]
RAND = [fixture_text(n) for n in ("vllm_k2_idle", "vllm_k2_random_a", "vllm_k2_random_b")]

# k3_zero_idle -> k3_zero_b: 50-0 drafts, 150-0 draft tokens, 150-0 accepted, 50-0 per position, 200-0 generated
ZERO_IDLE_TO_B = Increments(
    drafts=50.0, draft_tokens=150.0, accepted=150.0, per_position={0: 50.0, 1: 50.0, 2: 50.0}, generation_tokens=200.0
)


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


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
            await rounds(c, clock, targets, 3)  # scrapes at t=1000 (baseline), 1010, 1020
            clock.t -= 10
            fig = c.figures("ns", "tiny")
            # p0 k3_zero idle->b: drafts 50, draft tokens 150, accepted 150, positions 50/50/50, generated 200
            # p1 k2 idle->b: drafts 373-47=326, draft tokens 746-94=652, accepted 3-0=3, positions 3/0,
            #                generated 384-48=336
            assert fig.inc == Increments(
                drafts=376.0,  # 50 + 326
                draft_tokens=802.0,  # 150 + 652
                accepted=153.0,  # 150 + 3
                per_position={0: 53.0, 1: 50.0, 2: 50.0},  # 50+3, 50+0, 50 (k2 has no position 2)
                generation_tokens=536.0,  # 200 + 336
                resets=0,
            )
            assert fig.seconds == pytest.approx(20.0)  # 1000 -> 1020
            assert fig.acceptance_rate == pytest.approx(153 / 802)  # 0.19077
            assert fig.mean_acceptance_length == pytest.approx(1 + 153 / 376)  # 1.40691
            assert fig.num_speculative_tokens == pytest.approx(802 / 376)  # 2.13298: a mix of k=3 and k=2
            assert fig.per_position == pytest.approx({0: 53 / 376, 1: 50 / 376, 2: 50 / 376})
            assert fig.generation_tokens_per_second == pytest.approx(536 / 20)  # 26.8

    with caplog.at_level(logging.INFO):
        asyncio.run(main())
    assert "joined" in caplog.text


BAD_POD_WARNINGS = {
    # what the collector logs about the bad pod on each of rounds 2 and 3 (round 1 served k3_zero_idle)
    SLOW: ["{pod} failed: no answer within 0.5s"],
    FAIL: ["{pod} failed: HTTP 503"],
    # The HTML line is not one of the families the collector reads, so the parser skips it unread
    # (exposition.parse(only=...)); the malformed vLLM counter line is reported.
    GARBAGE: [
        "{pod}: 1 malformed line(s) skipped, first: line 2: not a sample: 'vllm:spec_decode_num_drafts_total{ NaN'",
        "{pod}: no vLLM counters for model 'tiny'; keeping the last values",
    ],
    EMPTY: ["{pod}: no vLLM counters for model 'tiny'; keeping the last values"],
}


@pytest.mark.parametrize("bad", [SLOW, FAIL, GARBAGE, EMPTY])
def test_bad_pod_costs_only_itself(bad, caplog):
    async def main() -> str:
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
            assert fig.inc == ZERO_IDLE_TO_B  # the good pod's idle->b increments, nothing from the bad one
            assert fig.acceptance_rate == pytest.approx(1.0)  # 150 accepted / 150 draft tokens
            return str(targets[1])

    with caplog.at_level(logging.WARNING, logger="mtp_rollout.metrics.collector"):
        bad_pod = asyncio.run(main())
    warnings = [r.getMessage() for r in caplog.records if r.name == "mtp_rollout.metrics.collector"]
    expected = [f"scrape of rollout pod {w.replace('{pod}', bad_pod)}" for w in BAD_POD_WARNINGS[bad]]
    assert warnings == expected * 2  # rounds 2 and 3, about the bad pod only


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
            # p0 a->b: drafts 50-20=30, draft tokens 150-60=90, accepted 150-60=90, positions 50-20=30 each,
            #          generated 200-80=120.
            # p0 b->restarted: every counter went down (7 series: drafts, draft tokens, accepted, 3 positions,
            #          generated), so each increment is the new value: 10, 30, 30, 10 each, 40.
            # p1 only ever gave its baseline (k3_zero_idle) before it left: nothing.
            assert fig.inc == Increments(
                drafts=40.0,  # 30 + 10
                draft_tokens=120.0,  # 90 + 30
                accepted=120.0,  # 90 + 30
                per_position={0: 40.0, 1: 40.0, 2: 40.0},  # 30 + 10 each
                generation_tokens=160.0,  # 120 + 40
                resets=7,
            )
            assert fig.seconds == pytest.approx(20.0)  # 1000 -> 1020
            assert fig.acceptance_rate == pytest.approx(1.0)  # 120 / 120

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
        # p0 k3_zero idle->b over the window: drafts 50, draft tokens 150, accepted 150, position 2: 50
        assert registry.get_sample_value(mn.ACCEPTANCE_RATE, labels) == pytest.approx(1.0)  # 150 / 150
        assert registry.get_sample_value(mn.MEAN_ACCEPTANCE_LENGTH, labels) == pytest.approx(4.0)  # 1 + 150/50
        assert registry.get_sample_value(mn.NUM_SPECULATIVE_TOKENS, labels) == pytest.approx(3.0)  # 150 / 50
        assert registry.get_sample_value(mn.SPEEDUP_BOUND, labels) == pytest.approx(4.0)  # 4 / (3*0 + 1)
        assert registry.get_sample_value(mn.POSITION_ACCEPTANCE_RATE, {**labels, "position": "2"}) == pytest.approx(
            1.0
        )  # 50 / 50
        assert registry.get_sample_value(mn.SCRAPE_ERRORS, labels) == 3  # the failing pod, once per round
        assert registry.get_sample_value(mn.PODS_SCRAPED, labels) == 1
        exporter.forget("ns", "tiny")
        assert registry.get_sample_value(mn.ACCEPTANCE_RATE, labels) is None
        assert registry.get_sample_value(mn.POSITION_ACCEPTANCE_RATE, {**labels, "position": "0"}) is None

    asyncio.run(main())


RUNNING_LINE = 'vllm:num_requests_running{engine="0",model_name="tiny"} 0.0'


def with_running(text: str, value: float | None) -> str:
    """A fixture body with vLLM's running-requests gauge at ``value`` (None: the line removed)."""
    assert RUNNING_LINE in text
    return text.replace(RUNNING_LINE, "" if value is None else RUNNING_LINE.replace("0.0", f"{value:.1f}"))


def test_mean_running_requests_per_pod_over_the_window():
    """Scrape means per pod: (4+2)/2 = 3, (6+2)/2 = 4, then p1 loses the gauge: 8 -> mean of 3, 4, 8 = 5;
    once the first scrapes leave the 25 s window only 4 and 8 remain: 6."""

    async def main() -> None:
        clock = Clock()
        p0 = FakePod([with_running(b, v) for b, v in zip(ZERO, (4, 6, 8), strict=True)])
        p1 = FakePod([with_running(b, v) for b, v in zip(RAND, (2, 2, None), strict=True)])
        async with serve_pods({"p0": p0, "p1": p1}) as urls:
            targets = [Target("ns", "tiny", name, url) for name, url in urls.items()]
            c = Collector(window_s=25, timeout_s=1, clock=clock)
            assert c.mean_running("ns", "tiny") is None
            await rounds(c, clock, targets, 3)  # scrapes at t=1000, 1010, 1020; the clock is now 1030
            clock.t = 1020
            assert c.mean_running("ns", "tiny") == pytest.approx((3 + 4 + 8) / 3)
            clock.t = 1035  # 1000 is out of the window [1010, 1035]
            assert c.mean_running("ns", "tiny") == pytest.approx((4 + 8) / 2)
            c.forget("ns", "tiny")
            assert c.mean_running("ns", "tiny") is None

    asyncio.run(main())


def test_session_fetch_reuses_one_connection_and_keeps_the_contract():
    """One shared session: many GETs of a pod over one kept-alive connection (a session per GET opens
    one each); the same errors as ``fetch_text`` for a failing pod."""
    from mtp_rollout.metrics.collector import ScrapeError, SessionFetch

    async def main() -> None:
        peers: set[tuple[str, int]] = set()

        class Counting(FakePod):
            async def handle(self, request):  # type: ignore[no-untyped-def]
                peers.add(request.transport.get_extra_info("peername"))
                return await super().handle(request)

        async with serve_pods({"p0": Counting(ZERO), "bad": FakePod([FAIL])}) as urls:
            fetch = SessionFetch(connections=4)
            bodies = [await fetch(urls["p0"], 2.0) for _ in range(5)]
            assert bodies[0] == ZERO[0] and bodies[-1] == ZERO[-1]
            assert len(peers) == 1  # five scrapes, one client connection
            with pytest.raises(ScrapeError, match="HTTP 503"):
                await fetch(urls["bad"], 2.0)
            await fetch.close()
            assert await fetch(urls["p0"], 2.0)  # usable again after close: a new session

    asyncio.run(main())


def test_bodies_are_parsed_off_the_event_loop(monkeypatch):
    import threading

    from mtp_rollout.metrics import collector as collector_mod

    seen: list[str] = []
    real = collector_mod.parse

    def recording(text, **kwargs):  # type: ignore[no-untyped-def]
        seen.append(threading.current_thread().name)
        return real(text, **kwargs)

    monkeypatch.setattr(collector_mod, "parse", recording)

    async def main() -> None:
        async with serve_pods({"p0": FakePod(ZERO)}) as urls:
            c = Collector(window_s=100, timeout_s=1)
            await c.scrape([Target("ns", "tiny", "p0", urls["p0"])])

    asyncio.run(main())
    assert seen and threading.main_thread().name not in seen
