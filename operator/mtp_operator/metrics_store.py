"""The latest trainer and rollout metrics per job, in memory, for the status.

Status must be a pure function of the job, its observed children and the latest metrics, so the
scrapers do not write status themselves: they put what they read here, and the next reconcile
(an event or the resync timer) copies it into ``status.trainer`` / ``status.rollout`` / ``status.rl``.

The seam for scrapers (e.g. a Kopf daemon running the rollout's ``Collector`` per job)::

    store = memo.metrics            # the one LatestMetrics of this operator, set at startup
    store.put_rollout(namespace, name, t.RolloutStatus(acceptance_rate=..., ...))
    store.put_trainer(namespace, name, t.TrainerStatus(step=..., lm_loss=..., mtp_loss=...))
    store.put_rl(namespace, name, t.RLStatus(step=..., reward_mean=..., accuracy=...))

Two more seams serve ``numSpeculativeTokens: auto`` (``speculation.py``): the scraper puts each round's
acceptance window (``put_window``: the collector's ``WindowFigures``, the pods it covers and, when known,
the mean running requests per pod), and the speculation round puts its ``SpeculationReport`` (the next
``status.speculation`` and the ``SpeculationCalibrated`` condition), which the next reconcile copies.

``ready_replicas`` in what is put is ignored: replica counts come from the observed children.
The store is thread-safe, so a scraper may also run in a thread.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

from mtp_api import types as t
from mtp_api.acceptance import WindowFigures

JobKey = tuple[str, str]


@dataclass(frozen=True)
class RolloutWindow:
    """One scrape round's window over the ready rollout pods: ``batch_size`` is the mean number of running
    requests per pod over the window (None when not measured), ``replicas`` the pods it sums over."""

    figures: WindowFigures
    replicas: int
    batch_size: float | None = None


@dataclass(frozen=True)
class SpeculationReport:
    """What the speculation round decided: the next ``status.speculation`` and the condition
    ``SpeculationCalibrated`` (``calibrated``, ``reason``, ``message``)."""

    status: t.SpeculationStatus
    calibrated: bool
    reason: str
    message: str


@dataclass(frozen=True)
class JobMetrics:
    """What is known about one job; any part may be missing (``rl`` is there only for rlvr jobs)."""

    trainer: t.TrainerStatus | None = None
    rollout: t.RolloutStatus | None = None
    rl: t.RLStatus | None = None
    window: RolloutWindow | None = None
    speculation: SpeculationReport | None = None


class LatestMetrics:
    """Keeps only the newest values per job; dropping a job forgets it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._trainer: dict[JobKey, t.TrainerStatus] = {}
        self._rollout: dict[JobKey, t.RolloutStatus] = {}
        self._rl: dict[JobKey, t.RLStatus] = {}
        self._window: dict[JobKey, RolloutWindow] = {}
        self._speculation: dict[JobKey, SpeculationReport] = {}

    def put_trainer(self, namespace: str, name: str, values: t.TrainerStatus) -> None:
        with self._lock:
            self._trainer[(namespace, name)] = values.model_copy()

    def put_rollout(self, namespace: str, name: str, values: t.RolloutStatus) -> None:
        with self._lock:
            self._rollout[(namespace, name)] = values.model_copy()

    def put_rl(self, namespace: str, name: str, values: t.RLStatus) -> None:
        with self._lock:
            self._rl[(namespace, name)] = values.model_copy()

    def put_window(self, namespace: str, name: str, window: RolloutWindow) -> None:
        with self._lock:
            self._window[(namespace, name)] = window

    def put_speculation(self, namespace: str, name: str, report: SpeculationReport) -> None:
        with self._lock:
            self._speculation[(namespace, name)] = report

    def get(self, namespace: str, name: str) -> JobMetrics:
        key = (namespace, name)
        with self._lock:
            return JobMetrics(
                self._trainer.get(key),
                self._rollout.get(key),
                self._rl.get(key),
                self._window.get(key),
                self._speculation.get(key),
            )

    def drop(self, namespace: str, name: str) -> None:
        with self._lock:
            self._trainer.pop((namespace, name), None)
            self._rollout.pop((namespace, name), None)
            self._rl.pop((namespace, name), None)
            self._window.pop((namespace, name), None)
            self._speculation.pop((namespace, name), None)

    def __len__(self) -> int:
        with self._lock:
            return len(
                set(self._trainer) | set(self._rollout) | set(self._rl) | set(self._window) | set(self._speculation)
            )
