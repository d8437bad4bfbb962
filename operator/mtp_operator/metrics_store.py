"""The latest trainer and rollout metrics per job, in memory, for the status.

Status must be a pure function of the job, its observed children and the latest metrics, so the
scrapers do not write status themselves: they put what they read here, and the next reconcile
(an event or the resync timer) copies it into ``status.trainer`` / ``status.rollout``.

The seam for scrapers (e.g. a Kopf daemon running ``mtp_rollout.collector`` per job)::

    store = memo.metrics            # the one LatestMetrics of this operator, set at startup
    store.put_rollout(namespace, name, t.RolloutStatus(acceptance_rate=..., ...))
    store.put_trainer(namespace, name, t.TrainerStatus(step=..., lm_loss=..., mtp_loss=...))

``ready_replicas`` in what is put is ignored: replica counts come from the observed children.
The store is thread-safe, so a scraper may also run in a thread.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

from mtp_api import types as t

JobKey = tuple[str, str]


@dataclass(frozen=True)
class JobMetrics:
    """What is known about one job; either part may be missing."""

    trainer: t.TrainerStatus | None = None
    rollout: t.RolloutStatus | None = None


class LatestMetrics:
    """Keeps only the newest values per job; dropping a job forgets it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._trainer: dict[JobKey, t.TrainerStatus] = {}
        self._rollout: dict[JobKey, t.RolloutStatus] = {}

    def put_trainer(self, namespace: str, name: str, values: t.TrainerStatus) -> None:
        with self._lock:
            self._trainer[(namespace, name)] = values.model_copy()

    def put_rollout(self, namespace: str, name: str, values: t.RolloutStatus) -> None:
        with self._lock:
            self._rollout[(namespace, name)] = values.model_copy()

    def get(self, namespace: str, name: str) -> JobMetrics:
        with self._lock:
            return JobMetrics(self._trainer.get((namespace, name)), self._rollout.get((namespace, name)))

    def drop(self, namespace: str, name: str) -> None:
        with self._lock:
            self._trainer.pop((namespace, name), None)
            self._rollout.pop((namespace, name), None)

    def __len__(self) -> int:
        with self._lock:
            return len(set(self._trainer) | set(self._rollout))
