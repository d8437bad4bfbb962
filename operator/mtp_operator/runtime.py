"""The operator's in-memory state, created once at startup and shared through Kopf's ``memo``.

Nothing here is a source of truth: all of it can be rebuilt from the API server, which is what
happens after a restart (Kopf indexes re-list the children before any handler runs).
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from mtp_operator.kube import ApiClient
from mtp_operator.metrics_store import JobKey, LatestMetrics
from mtp_operator.observed import ChildKey
from mtp_operator.settings import OperatorConfig
from mtp_operator.speculation import SpeculationRound
from mtp_rollout.interface import SessionFetch

SCRAPE_CONNECTIONS = 64  # open /metrics connections at most, over every job's pods


@dataclass
class Runtime:
    config: OperatorConfig
    metrics: LatestMetrics = field(default_factory=LatestMetrics)
    # The operator's one API client (one session, requests in flight capped), shared by every Kube.
    api: ApiClient | None = None
    written: dict[JobKey, dict[ChildKey, str]] = field(default_factory=lambda: defaultdict(dict))
    status_written: dict[JobKey, dict[str, Any]] = field(default_factory=dict)
    # Children found to carry every applied field: (resourceVersion, spec hash) checked (apply.py).
    owned: dict[JobKey, dict[ChildKey, tuple[str, str]]] = field(default_factory=lambda: defaultdict(dict))
    locks: dict[JobKey, asyncio.Lock] = field(default_factory=lambda: defaultdict(asyncio.Lock))
    # The typed job and its desired children, per (uid, generation, hash of labels and annotations): what
    # they are built from only changes with these, so idle reconciles skip parsing and building.
    built: dict[JobKey, tuple[tuple[str, int, str], Any]] = field(default_factory=dict)
    # The operator-level periodic loop (periodic.py) and the event that stops it.
    background: asyncio.Task[None] | None = None
    background_stop: asyncio.Event = field(default_factory=asyncio.Event)
    # numSpeculativeTokens: auto, the newest speculation status per job between status writes (speculation.py).
    speculation: SpeculationRound | None = None
    # The one HTTP session every scrape of every pod goes through (connections capped; periodic.py).
    scrape_fetch: SessionFetch = field(default_factory=lambda: SessionFetch(connections=SCRAPE_CONNECTIONS))

    def job(self, key: JobKey) -> Any:
        """The typed job last reconciled for ``key`` (None before its first reconcile or if invalid)."""
        cached = self.built.get(key)
        return cached[1]["job"] if cached is not None else None

    def forget(self, key: JobKey) -> None:
        """A job is gone: drop everything kept for it."""
        self.written.pop(key, None)
        self.status_written.pop(key, None)
        self.owned.pop(key, None)
        self.locks.pop(key, None)
        self.built.pop(key, None)
        self.metrics.drop(*key)
        if self.speculation is not None:
            self.speculation.forget(key)
