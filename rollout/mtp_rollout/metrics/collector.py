"""Scrape rollout pods' ``/metrics`` and keep windowed speculative-decoding figures per job.

Why a collector of our own: the operator must show acceptance in ``kubectl get`` and on its own
metrics endpoint even where no Prometheus runs. Everything a pod can do wrong (answer slowly,
fail, return garbage or nothing, restart, disappear, appear) is bounded by a timeout, costs only
that pod's contribution, and leaves one clear log line; ``scrape()`` never raises for a pod.

The per-pod state is the last good counter values; each scrape turns them into reset-aware
increments (``rates.increments``) that land in the job's ``IncrementWindow``. Each scrape also reads
vLLM's running-requests gauge; ``mean_running`` is its mean per pod over the window (the batch size
``numSpeculativeTokens: auto`` weighs its schedule at).
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field

import aiohttp

from mtp_api import contracts
from mtp_api.acceptance import IncrementWindow, SeriesKey, WindowFigures, counter_series, increments
from mtp_api.exposition import Sample, parse

log = logging.getLogger(__name__)

JobKey = tuple[str, str]  # (namespace, job)
Fetch = Callable[[str, float], Awaitable[str]]
MAX_BODY_BYTES = 8 * 1024 * 1024
# The vLLM families a scrape reads (the acceptance counters, the running-requests gauge): the parser
# skips every other line of the body unparsed.
COLLECTED_NAMES = frozenset((*contracts.VLLM_COUNTERS, contracts.VLLM_RUNNING))


@dataclass(frozen=True)
class Target:
    """One rollout pod's metrics endpoint. ``job`` is the MTPTrainingJob name (vLLM's model_name)."""

    namespace: str
    job: str
    pod: str
    url: str

    @property
    def job_key(self) -> JobKey:
        return (self.namespace, self.job)

    def __str__(self) -> str:
        return f"{self.namespace}/{self.pod} ({self.url})"


@dataclass
class _PodState:
    series: dict[SeriesKey, float]
    at: float
    running: float | None = None  # vLLM's running requests at ``at`` (summed over engines), None if absent


def running_requests(samples: Iterable[Sample], model_name: str | None = None) -> float | None:
    """vLLM's running-requests gauge summed over the pod's engines; None when the pod does not serve it."""
    values = [
        s.value
        for s in samples
        if s.name == contracts.VLLM_RUNNING
        and (model_name is None or s.label(contracts.VLLM_MODEL_LABEL) in (None, model_name))
        and math.isfinite(s.value)
        and s.value >= 0
    ]
    return sum(values) if values else None


@dataclass
class ScrapeReport:
    """What one scrape round saw: per-job error counts and the pods that answered."""

    ok: dict[JobKey, int] = field(default_factory=dict)
    errors: dict[JobKey, int] = field(default_factory=dict)


class ScrapeError(Exception):
    """A pod answered, but not with usable exposition text."""


async def _read(session: aiohttp.ClientSession, url: str, timeout_s: float) -> str:
    async with session.get(url, timeout=aiohttp.ClientTimeout(total=timeout_s)) as resp:
        if resp.status != 200:
            raise ScrapeError(f"HTTP {resp.status}")
        body = await resp.content.read(MAX_BODY_BYTES + 1)
        if len(body) > MAX_BODY_BYTES:
            raise ScrapeError(f"body larger than {MAX_BODY_BYTES} bytes")
        return body.decode("utf-8", errors="replace")


async def fetch_text(url: str, timeout_s: float) -> str:
    """GET ``url`` within ``timeout_s`` seconds (connect and body), refusing bodies over 8 MiB. A session
    of its own per call: for one-off scrapes (a local run); a loop over many pods uses :class:`SessionFetch`."""
    async with aiohttp.ClientSession() as session:
        return await _read(session, url, timeout_s)


class SessionFetch:
    """``fetch_text`` over one shared HTTP session with at most ``connections`` open at once.

    Why: the operator scrapes every rollout pod of every job each round; a session per GET builds and
    tears down a connector (and its DNS cache and TLS context) a thousand times a round, and nothing
    bounds how many sockets a round opens. The session is made on first use, inside the running event
    loop, and :meth:`close` ends it (the operator's cleanup)."""

    def __init__(self, connections: int = 64) -> None:
        self.connections = connections
        self._session: aiohttp.ClientSession | None = None

    async def __call__(self, url: str, timeout_s: float) -> str:
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(limit=self.connections, ttl_dns_cache=300)
            self._session = aiohttp.ClientSession(connector=connector)
        return await _read(self._session, url, timeout_s)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


class Collector:
    """Windowed figures per (namespace, job) from repeated scrapes of changing sets of pods."""

    def __init__(
        self,
        *,
        window_s: float = 60.0,
        timeout_s: float = 2.0,
        draft_cost_ratio: float = 0.0,
        clock: Callable[[], float] = time.monotonic,
        fetch: Fetch = fetch_text,
    ) -> None:
        self.window_s = window_s
        self.timeout_s = timeout_s
        self.draft_cost_ratio = draft_cost_ratio
        self._clock = clock
        self._fetch = fetch
        self._pods: dict[Target, _PodState] = {}
        self._windows: dict[JobKey, IncrementWindow] = {}
        self._running: dict[JobKey, deque[tuple[float, float]]] = {}  # (time, mean running per pod)

    def jobs(self) -> set[JobKey]:
        return set(self._windows)

    def figures(self, namespace: str, job: str) -> WindowFigures:
        """The job's figures over the last ``window_s`` seconds (all None before two scrapes)."""
        window = self._windows.get((namespace, job))
        if window is None:
            window = IncrementWindow(self.window_s, self.draft_cost_ratio)
        return window.figures(self._clock())

    def mean_running(self, namespace: str, job: str) -> float | None:
        """Running requests per pod, averaged over the scrapes of the last ``window_s`` seconds (each scrape
        the mean over the pods that answered with the gauge); None when no scrape in the window had it."""
        samples = self._running.get((namespace, job))
        if not samples:
            return None
        now = self._clock()
        while samples and samples[0][0] < now - self.window_s - 1e-9:
            samples.popleft()
        return sum(v for _, v in samples) / len(samples) if samples else None

    def forget(self, namespace: str, job: str) -> None:
        """Drop a deleted job's window and pods."""
        self._windows.pop((namespace, job), None)
        self._running.pop((namespace, job), None)
        for target in [t for t in self._pods if t.job_key == (namespace, job)]:
            del self._pods[target]

    async def _scrape_one(self, target: Target) -> str | Exception:
        try:
            return await asyncio.wait_for(self._fetch(target.url, self.timeout_s), timeout=self.timeout_s + 0.5)
        except TimeoutError:
            return TimeoutError(f"no answer within {self.timeout_s:g}s")
        except Exception as exc:  # noqa: BLE001 - any failure of one pod is logged, never raised
            return exc

    async def scrape(self, targets: Iterable[Target]) -> ScrapeReport:
        """Scrape every target concurrently once and fold the results into the windows."""
        wanted = list(dict.fromkeys(targets))
        for gone in [t for t in self._pods if t not in wanted]:
            log.info("rollout pod %s left; dropping its counters", gone)
            del self._pods[gone]
        for target in wanted:
            self._windows.setdefault(target.job_key, IncrementWindow(self.window_s, self.draft_cost_ratio))
        bodies = await asyncio.gather(*(self._scrape_one(t) for t in wanted))
        now = self._clock()
        # Parsing a vLLM body (hundreds of lines) per pod is CPU work: off the event loop, so that an
        # operator scraping many jobs keeps answering watch events and API calls meanwhile. Only this
        # collector's own state is touched, and a collector runs one scrape at a time.
        return await asyncio.to_thread(self._fold_all, wanted, bodies, now)

    def _fold_all(self, wanted: list[Target], bodies: list[str | Exception], now: float) -> ScrapeReport:
        report = ScrapeReport()
        for target, body in zip(wanted, bodies, strict=True):
            if self._fold(target, body, now):
                report.ok[target.job_key] = report.ok.get(target.job_key, 0) + 1
            else:
                report.errors[target.job_key] = report.errors.get(target.job_key, 0) + 1
        self._fold_running(wanted, now)
        return report

    def _fold_running(self, targets: list[Target], now: float) -> None:
        """This scrape's mean running requests per pod, per job, over the pods that answered with it."""
        per_job: dict[JobKey, list[float]] = {}
        for target in targets:
            state = self._pods.get(target)
            if state is not None and state.at == now and state.running is not None:
                per_job.setdefault(target.job_key, []).append(state.running)
        for key, values in per_job.items():
            self._running.setdefault(key, deque()).append((now, sum(values) / len(values)))

    def _fold(self, target: Target, body: str | Exception, now: float) -> bool:
        if isinstance(body, Exception):
            log.warning("scrape of rollout pod %s failed: %s", target, str(body) or type(body).__name__)
            return False
        parsed = parse(body, only=COLLECTED_NAMES)
        if parsed.errors:
            log.warning(
                "scrape of rollout pod %s: %d malformed line(s) skipped, first: %s",
                target,
                len(parsed.errors),
                parsed.errors[0],
            )
        series, problems = counter_series(parsed.samples, model_name=target.job)
        for problem in problems[:3]:
            log.warning("scrape of rollout pod %s: %s", target, problem)
        if not series:
            log.warning(
                "scrape of rollout pod %s: no vLLM counters for model %r; keeping the last values", target, target.job
            )
            return False
        running = running_requests(parsed.samples, model_name=target.job)
        prev = self._pods.get(target)
        if prev is None:
            log.info("rollout pod %s joined; its next scrape starts counting", target)
            self._pods[target] = _PodState(series, now, running)
            return True
        inc = increments(prev.series, series)
        if inc.resets:
            log.info("rollout pod %s: %d counter(s) went down (a restart); counting from zero", target, inc.resets)
        self._windows[target.job_key].add(prev.at, now, inc)
        # Series missing from this scrape keep their last value, so a transient gap loses nothing.
        self._pods[target] = _PodState({**prev.series, **series}, now, running)
        return True


async def run_forever(
    collector: Collector,
    discover: Callable[[], Iterable[Target]],
    on_figures: Callable[[str, str, WindowFigures, ScrapeReport], None],
    *,
    interval_s: float,
    stop: asyncio.Event,
) -> None:
    """Scrape every ``interval_s`` until ``stop`` is set, handing each job's figures to ``on_figures``."""
    while not stop.is_set():
        try:
            targets = list(discover())
        except Exception:
            log.exception("rollout pod discovery failed; retrying in %gs", interval_s)
            targets = []
        report = await collector.scrape(targets)
        for namespace, job in sorted(collector.jobs()):
            on_figures(namespace, job, collector.figures(namespace, job), report)
        try:
            await asyncio.wait_for(stop.wait(), timeout=interval_s)
        except TimeoutError:
            pass
