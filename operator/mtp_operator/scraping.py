"""Scrape one job's rollout and trainer pods into the metrics store and the operator's gauges.

A per-job Kopf daemon (``handlers.py``) calls ``JobScraper.round`` every ``scrape_seconds``:

- the rollout half runs the rollout's ``Collector`` (``mtp_rollout.interface``) over the job's ready rollout pods
  (windowed, reset-aware acceptance figures; every pod failure is bounded by a timeout and costs
  one log line) and publishes the figures through ``AcceptanceExporter`` on the operator's own
  ``/metrics``, labelled by namespace and job;
- the trainer half reads rank 0's ``mtp_trainer_*`` gauges (step, train lm loss, train MTP loss)
  and, for rlvr, its ``mtp_trainer_rl_*`` gauges of the latest RL step (reward, accuracy,
  acceptance during the step's generation, weight version).

Nothing here writes status. Every round's window goes into ``LatestMetrics`` for the speculation round
(``put_window``); what goes into ``LatestMetrics`` is the rounded summary of
``rollout_status``, and only when ``StatusWritePolicy`` says it is worth a write, so the next
reconcile patches status at most once per ``status_min_interval_seconds`` for acceptance noise.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Awaitable, Callable, Iterable

from pydantic import ValidationError

from mtp_api import contracts
from mtp_api import types as t
from mtp_api.exposition import parse
from mtp_operator import names
from mtp_operator.metrics_store import JobKey, LatestMetrics, RolloutWindow
from mtp_operator.observed import PodState
from mtp_operator.settings import OperatorConfig
from mtp_rollout.interface import AcceptanceExporter, Collector, StatusWritePolicy, Target, fetch_text, rollout_status

log = logging.getLogger(__name__)

Fetch = Callable[[str, float], Awaitable[str]]


def rollout_targets(job: t.MTPTrainingJob, pods: Iterable[PodState]) -> list[Target]:
    """The ready rollout pods with an IP; vLLM serves ``/metrics`` on its API port."""
    if job.spec.rollout is None:
        return []
    port = job.spec.rollout.port
    ns = job.metadata.namespace or ""
    return [
        Target(ns, job.metadata.name, p.name, f"http://{p.ip}:{port}/metrics")
        for p in pods
        if p.component == names.COMPONENT_ROLLOUT and p.ready and p.ip
    ]


def trainer_url(job: t.MTPTrainingJob, pods: Iterable[PodState]) -> str | None:
    """Rank 0 reports for the whole job: pod ``<job>-trainer-0``."""
    rank0 = f"{names.trainer(job)}-0"
    for p in pods:
        if p.name == rank0 and p.ip:
            return f"http://{p.ip}:{job.spec.trainer.metrics_port}/metrics"
    return None


def trainer_status(text: str) -> t.TrainerStatus | None:
    """Step, train lm loss, the mean train MTP loss over depths and the per-depth MTP agreement from
    the trainer's exposition.

    Garbage lines are skipped by the parser; a body without ``mtp_trainer_step`` gives None."""
    step: float | None = None
    lm: float | None = None
    mtp: list[float] = []
    agreement: dict[int, float] = {}
    for s in parse(text).samples:
        if not math.isfinite(s.value):
            continue
        if s.name == contracts.TRAINER_STEP:
            step = s.value
        elif s.name == contracts.TRAINER_LM_LOSS and s.label("split") in (None, "train"):
            lm = s.value
        elif s.name == contracts.TRAINER_MTP_LOSS and s.label("split") in (None, "train"):
            mtp.append(s.value)
        elif s.name == contracts.TRAINER_MTP_AGREEMENT and s.label("split") in (None, "train"):
            depth = s.label("depth")
            if depth is not None and depth.isdigit() and 0.0 <= s.value <= 1.0:
                agreement[int(depth)] = s.value
    if step is None or step < 0:
        return None
    # depths 1..n without a gap; a garbage or missing depth ends the list there
    depths: list[float] = []
    while len(depths) + 1 in agreement:
        depths.append(agreement[len(depths) + 1])
    return t.TrainerStatus(
        step=int(step),
        lm_loss=lm,
        mtp_loss=sum(mtp) / len(mtp) if mtp else None,
        mtp_agreement=depths or None,
    )


# rank 0's RL gauges (trainer/mtp_trainer/rl/metrics.py) -> RLStatus fields; reward and accuracy are
# read for split="train" (the step's own samples), not the held-out validation figures.
RL_GAUGES = {
    contracts.RL_REWARD_MEAN: "reward_mean",
    contracts.RL_ACCURACY: "accuracy",
    contracts.RL_ACCEPTANCE_RATE: "acceptance_rate",
    contracts.RL_MEAN_ACCEPTANCE_LENGTH: "mean_acceptance_length",
    contracts.RL_WEIGHT_VERSION: "weight_version",
}
SPLIT_GAUGES = (contracts.RL_REWARD_MEAN, contracts.RL_ACCURACY)
INTEGER_FIELDS = ("step", "weight_version")


def rl_status(text: str) -> t.RLStatus | None:
    """The latest RL step's figures from rank 0's exposition, unrounded (status rounds).

    The step is ``mtp_trainer_step``, which an rlvr trainer sets to the RL step it last recorded
    (warm-up steps never move it). None until the first RL step has been recorded (no RL gauge
    yet: still warming up, or not an rlvr trainer). A value outside its field's range (an
    accuracy above 1) drops that one field, with a log line, rather than the whole block."""
    step: float | None = None
    values: dict[str, float] = {}
    for s in parse(text).samples:
        if not math.isfinite(s.value):
            continue
        if s.name == contracts.TRAINER_STEP:
            step = s.value
        elif s.name in RL_GAUGES and (s.name not in SPLIT_GAUGES or s.label("split") in (None, "train")):
            values[RL_GAUGES[s.name]] = s.value
    if not values:
        return None
    if step is not None:
        values["step"] = step
    fields: dict[str, float] = {}
    for key, value in values.items():
        value = int(value) if key in INTEGER_FIELDS else value
        try:
            t.RLStatus.model_validate({key: value})
        except ValidationError:
            log.warning("trainer RL gauge for %s out of range: %r", key, value)
            continue
        fields[key] = value
    return t.RLStatus.model_validate(fields)


class JobScraper:
    """The scraping state of one job: its acceptance window and what was last put in the store."""

    def __init__(
        self,
        key: JobKey,
        config: OperatorConfig,
        store: LatestMetrics,
        exporter: AcceptanceExporter,
        *,
        fetch: Fetch = fetch_text,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.key = key
        self._config = config
        self._store = store
        self._exporter = exporter
        self._fetch = fetch
        self._clock = clock
        self._collector = Collector(
            window_s=config.acceptance_window_seconds, timeout_s=config.scrape_timeout_seconds, fetch=fetch, clock=clock
        )
        self._policy = StatusWritePolicy(min_interval_s=config.status_min_interval_seconds)
        self._last: t.RolloutStatus | None = None
        self._last_at: float | None = None

    async def round(self, job: t.MTPTrainingJob, pods: Iterable[PodState]) -> None:
        """One scrape of every pod of the job; never raises for a pod's failure."""
        pods = list(pods)
        namespace, name = self.key
        targets = rollout_targets(job, pods)
        if targets or self._collector.jobs():
            report = await self._collector.scrape(targets)
            figures = self._collector.figures(namespace, name)
            self._exporter.publish(namespace, name, figures, report)
            # numSpeculativeTokens: auto reads every round's window (speculation.py), with the mean running
            # requests per pod as the batch size (None when vLLM's gauge is absent: sizes weigh evenly).
            running = self._collector.mean_running(namespace, name)
            self._store.put_window(namespace, name, RolloutWindow(figures, replicas=len(targets), batch_size=running))
            new = rollout_status(figures, ready_replicas=len(targets))
            now = self._clock()
            if self._policy.should_write(self._last, self._last_at, new, now):
                self._store.put_rollout(namespace, name, new)
                self._last, self._last_at = new, now
        url = trainer_url(job, pods)
        if url is not None:
            await self._scrape_trainer(url)

    async def _scrape_trainer(self, url: str) -> None:
        try:
            text = await self._fetch(url, self._config.scrape_timeout_seconds)
        except Exception as exc:  # noqa: BLE001 - a failing trainer pod costs one log line
            log.warning("scrape of trainer %s/%s at %s failed: %s", *self.key, url, str(exc) or type(exc).__name__)
            return
        rl = rl_status(text)
        if rl is not None:
            self._store.put_rl(*self.key, rl)
        status = trainer_status(text)
        if status is None:
            log.warning("scrape of trainer %s/%s at %s: no %s series", *self.key, url, contracts.TRAINER_STEP)
            return
        self._store.put_trainer(*self.key, status)

    def close(self) -> None:
        """The job is gone or the operator stops: remove its gauge series."""
        self._exporter.forget(*self.key)
        self._collector.forget(*self.key)
