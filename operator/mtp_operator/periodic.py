"""One operator-level loop for the periodic work: scrape every job's pods and resync every job.

Kopf's per-object timers and daemons put a finalizer on every object they serve, so that they can be
stopped before the object goes. With the operator down or uninstalled, deleting a job (or its
namespace) would then hang on that finalizer. This loop does the same work over the jobs index
instead, so jobs carry no finalizer and the garbage collector deletes their children through owner
references, whether or not the operator runs.

- Every ``scrape_seconds`` it runs ``scraping.JobScraper.round`` for every job (at most
  ``SCRAPE_CONCURRENCY`` jobs at a time), then ``after_scrape`` for the job (the decision point of
  ``numSpeculativeTokens: auto``, ``speculation.py``); a job that is gone has its scraper closed.
  Each job starts at its own fixed offset within the first ``SCRAPE_SPREAD`` of the interval (a hash
  of its key: the jitter), so a thousand jobs do not hit their pods and the parser in one burst, and
  each job is still scraped once per interval. The pods' HTTP goes through one shared session
  (``Runtime.scrape_fetch``) and the bodies are parsed off the event loop (``Collector.scrape``).
- Every ``resync_seconds`` it runs the reconcile of every job (deadlines, the stall watchdog, stuck pods,
  ``ttlSecondsAfterFinished``: the rules that depend on time rather than on an event).
- With peering, a replica that Kopf would pause (a live peer of higher priority, or another of equal
  priority) skips the round, as Kopf's own handlers do.

The loop is a background task started by the startup handler and stopped by the cleanup handler; it
waits on an event between rounds, never in a handler.
"""

from __future__ import annotations

import asyncio
import datetime
import hashlib
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any

from mtp_operator.metrics_store import JobKey
from mtp_operator.observed import PodState
from mtp_operator.scraping import JobScraper

log = logging.getLogger(__name__)

SCRAPE_CONCURRENCY = 32
SCRAPE_SPREAD = 0.5  # jobs' start offsets fill this fraction of the scrape interval


def jitter(key: JobKey, span: float) -> float:
    """A job's fixed start offset in ``[0, span)``: stable across rounds and restarts (a hash of the
    key, not ``hash()``, which Python salts per process), spread evenly over the jobs."""
    digest = hashlib.blake2b(f"{key[0]}/{key[1]}".encode(), digest_size=8).digest()
    return span * int.from_bytes(digest, "big") / 2**64


Resync = Callable[[JobKey], Awaitable[None]]
Paused = Callable[[], Awaitable[bool]]


class Periodic:
    """The loop's state: one scraper per job, and when each kind of round is next due."""

    def __init__(
        self,
        *,
        scrape_seconds: float,
        resync_seconds: float,
        jobs: Mapping[JobKey, Any],
        pods: Mapping[JobKey, Iterable[PodState]],
        typed_job: Callable[[JobKey], Any],
        make_scraper: Callable[[JobKey], JobScraper],
        resync: Resync,
        paused: Paused | None = None,
        after_scrape: Resync | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.scrape_seconds = scrape_seconds
        self.resync_seconds = resync_seconds
        self._jobs = jobs
        self._pods = pods
        self._typed_job = typed_job
        self._make_scraper = make_scraper
        self._resync = resync
        self._paused = paused
        self._after_scrape = after_scrape
        self._clock = clock
        self.scrapers: dict[JobKey, JobScraper] = {}
        now = clock()
        self._next_scrape = now + scrape_seconds
        self._next_resync = now + resync_seconds

    @property
    def interval(self) -> float:
        return min(self.resync_seconds, self.scrape_seconds) if self.scrape_seconds > 0 else self.resync_seconds

    async def tick(self) -> None:
        """One pass: whatever is due. Never raises for one job's failure."""
        now = self._clock()
        scrape = self.scrape_seconds > 0 and now >= self._next_scrape
        resync = now >= self._next_resync
        if not (scrape or resync):
            return
        if self._paused is not None and await self._paused():
            return
        keys = list(self._jobs.keys())
        if scrape:
            await self._scrape(keys)
            # Once per interval from the round's start; a round that overran (a slow API server, a
            # thousand jobs on two cores) leaves at least the jitter's spread before the next one,
            # so rounds never run back to back.
            gap = self.scrape_seconds * SCRAPE_SPREAD
            self._next_scrape = max(now + self.scrape_seconds, self._clock() + gap)
        if resync:
            for key in keys:
                try:
                    await self._resync(key)
                except Exception as exc:  # noqa: BLE001 - the next round, or an event, tries again
                    log.warning("resync of %s/%s failed: %s", *key, str(exc) or type(exc).__name__)
            # Level-based: the next resync a full interval after this one ended (during a burst of
            # creates a resync of every job takes longer than the interval).
            self._next_resync = self._clock() + self.resync_seconds

    async def _scrape(self, keys: list[JobKey]) -> None:
        for gone in set(self.scrapers) - set(keys):
            self.scrapers.pop(gone).close()
        limit = asyncio.Semaphore(SCRAPE_CONCURRENCY)

        spread = self.scrape_seconds * SCRAPE_SPREAD if len(keys) > 1 else 0.0

        async def one(key: JobKey) -> None:
            if self._typed_job(key) is None:  # not reconciled yet (or invalid): nothing to scrape
                return
            if spread > 0:
                await asyncio.sleep(jitter(key, spread))
            job = self._typed_job(key)
            if job is None:
                return
            scraper = self.scrapers.get(key)
            if scraper is None:
                scraper = self.scrapers[key] = self._make_scraper(key)
            async with limit:
                try:
                    await scraper.round(job, self._pods[key] if key in self._pods else [])
                except Exception as exc:  # noqa: BLE001 - a scraper bug costs one job one round
                    log.warning("scrape of %s/%s failed: %s", *key, str(exc) or type(exc).__name__)
                if self._after_scrape is None:
                    return
                try:
                    await self._after_scrape(key)
                except Exception as exc:  # noqa: BLE001 - the next round tries again
                    log.warning("speculation round of %s/%s failed: %s", *key, str(exc) or type(exc).__name__)

        await asyncio.gather(*(one(k) for k in keys))

    async def run(self, stop: asyncio.Event) -> None:
        try:
            while not stop.is_set():
                await self.tick()
                # Until the next round is due (a long round does not push every later one back).
                due = min(self._next_scrape if self.scrape_seconds > 0 else self._next_resync, self._next_resync)
                try:
                    await asyncio.wait_for(stop.wait(), max(due - self._clock(), 0.05))
                except TimeoutError:
                    pass
        finally:
            self.close()

    def close(self) -> None:
        for scraper in self.scrapers.values():
            scraper.close()
        self.scrapers.clear()


def paused_by_peers(status: Mapping[str, Any] | None, priority: int, now: datetime.datetime) -> bool:
    """Kopf's own rule over a peering object's ``status`` (identity -> priority, lifetime, lastseen): pause
    when a live peer has a higher priority, or another live peer has the same one. Our own entry has our
    priority; priorities are random per process, so a second entry with it is another replica."""
    live = []
    for info in (status or {}).values():
        if not isinstance(info, Mapping):
            continue
        try:
            seen = datetime.datetime.fromisoformat(str(info.get("lastseen")))
        except ValueError:
            continue
        if seen.tzinfo is None:
            seen = seen.replace(tzinfo=datetime.UTC)
        if seen + datetime.timedelta(seconds=int(info.get("lifetime") or 60)) > now:
            live.append(int(info.get("priority") or 0))
    return any(p > priority for p in live) or live.count(priority) > 1
