"""Thin Kopf wiring: every handler turns an event into a call of ``reconcile.reconcile``.

Handlers are registered into a fresh ``kopf.OperatorRegistry`` built from the typed settings, so
the resync interval and label selectors come from one object read at startup, and tests can run
several operators in one process. Children are seen through Kopf indexes (Kopf populates them
before any handler runs, so a restarted operator sees existing children and does not re-create
them); child events only wake the owning job's reconcile. There is no per-job Kopf timer or daemon
(each would put a finalizer on every job): resync and scraping run in one operator-level loop
(``periodic.py``) that the startup handler starts and the cleanup handler stops.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
from collections.abc import Iterable, Mapping
from typing import Any

import kopf

from mtp_api import types as t
from mtp_operator import metrics, names
from mtp_operator.coalesce import Coalescer
from mtp_operator.kube import ApiClient, ApiError, Kube, NotFound
from mtp_operator.metrics_store import JobKey
from mtp_operator.observed import ChildState, PodState, observed_from, summarize_child, summarize_pod
from mtp_operator.periodic import Periodic, paused_by_peers
from mtp_operator.reconcile import parse_status, reconcile
from mtp_operator.runtime import Runtime
from mtp_operator.scraping import JobScraper
from mtp_operator.settings import OperatorConfig
from mtp_operator.speculation import SpeculationRound

MANAGED = {names.LABEL_MANAGED_BY: names.MANAGED_BY}
MANAGED_SELECTOR = f"{names.LABEL_MANAGED_BY}={names.MANAGED_BY}"

# (group, version, plural, kind) of every child kind and of pods.
CHILD_KINDS = (
    ("", "v1", "configmaps", "ConfigMap"),
    ("", "v1", "services", "Service"),
    ("apps", "v1", "statefulsets", "StatefulSet"),
    ("apps", "v1", "deployments", "Deployment"),
    ("policy", "v1", "poddisruptionbudgets", "PodDisruptionBudget"),
)
POD_KIND = ("", "v1", "pods", "Pod")


def _job_key(meta: Mapping[str, Any]) -> JobKey | None:
    job = (meta.get("labels") or {}).get(names.LABEL_JOB)
    return (meta.get("namespace", ""), job) if job else None


def make_settings(config: OperatorConfig) -> kopf.OperatorSettings:
    settings = kopf.OperatorSettings()
    settings.posting.level = logging.WARNING  # no Event writes for routine progress
    settings.peering.name = config.peering_name
    settings.peering.priority = config.peering_priority
    settings.peering.standalone = config.standalone
    settings.peering.mandatory = not config.standalone
    settings.watching.server_timeout = 300
    settings.networking.error_backoffs = [1, 2, 4]  # Kopf's own watches; our calls use none
    # Kopf keeps a worker per watched object for idle_timeout after its last event, holding that decoded
    # event (5 s by default): in a burst of 1000 jobs, every child's full body for 5 s. Half a second is
    # still ten of Kopf's 0.1 s batch windows, and the benchmark ran with it all along (tests' harness).
    settings.batching.idle_timeout = 0.5
    for group, version, plural, _ in (*CHILD_KINDS, POD_KIND):
        settings.watching.label_selectors[group, version, plural] = MANAGED_SELECTOR
    return settings


def _observed(
    key: JobKey, indexes: Iterable[Mapping[JobKey, Iterable[ChildState]]], pods: Mapping[JobKey, Iterable[PodState]]
) -> Any:
    children = [c for idx in indexes if key in idx for c in idx[key]]
    return observed_from(children, pods[key] if key in pods else [])


def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
    """The in-cluster service account, else the kubeconfig: Kopf's own fallbacks when no Kubernetes client
    library is installed (the operator image has none), through its public login helpers."""
    return kopf.login_with_service_account(**kwargs) or kopf.login_with_kubeconfig(**kwargs)


def make_registry(config: OperatorConfig, login_fn: Any = login) -> kopf.OperatorRegistry:
    """All handlers of the operator, parameterised by the settings; ``login_fn`` is the one login handler
    (tests pass one that names the test API server)."""
    registry = kopf.OperatorRegistry()
    kopf.on.login(id="login", registry=registry)(login_fn)
    jobs = (t.GROUP, t.VERSION, t.PLURAL)

    @kopf.on.startup(id="startup", registry=registry)
    async def startup(
        memo: Any, settings: kopf.OperatorSettings, logger: logging.Logger | logging.LoggerAdapter[Any], **kwargs: Any
    ) -> None:
        runtime = memo.runtime = Runtime(config=config, api=ApiClient(login_fn, logger))
        metrics.serve(config.metrics_port)
        assert runtime.api is not None
        kube = Kube(runtime.api, logger)
        jobs_index = kwargs["idx_jobs"]  # Kopf's indexes are live objects, already there at startup
        context = {**kwargs, "memo": memo, "logger": logger}

        async def resync(key: JobKey) -> None:
            bodies = jobs_index.get(key)
            if bodies:
                await run(key, _latest(bodies, None), "timer", context)

        spec_round = runtime.speculation = SpeculationRound(
            runtime.metrics, min_interval_s=config.status_min_interval_seconds
        )

        async def speculate(key: JobKey) -> None:
            """numSpeculativeTokens: auto: one decision point; a new report is copied into status (and the
            rollout re-rendered) by the job's reconcile, run here at once."""
            bodies, job = jobs_index.get(key), runtime.job(key)
            if not bodies or job is None:
                return
            stored = runtime.status_written.get(key, _latest(bodies, None).get("status"))
            now = datetime.datetime.now(datetime.UTC)
            if await spec_round.round(key, job, parse_status(stored), kube, now):
                await resync(key)

        async def paused() -> bool:
            now = datetime.datetime.now(datetime.UTC)
            for path in _peering_paths(config):
                try:
                    body = await kube.get(path)
                except NotFound:
                    continue
                if paused_by_peers(body.get("status"), settings.peering.priority, now):
                    return True
            return False

        loop = Periodic(
            scrape_seconds=config.scrape_seconds,
            resync_seconds=config.resync_seconds,
            jobs=jobs_index,
            pods=kwargs["idx_pods"],
            typed_job=runtime.job,
            make_scraper=lambda key: JobScraper(
                key, config, runtime.metrics, metrics.ACCEPTANCE, fetch=runtime.scrape_fetch
            ),
            resync=resync,
            paused=None if config.standalone else paused,
            after_scrape=speculate,
        )
        runtime.background_stop = asyncio.Event()
        runtime.background = asyncio.create_task(loop.run(runtime.background_stop), name="mtp-periodic")
        logger.info(f"mtp-operator started: {config.model_dump()}")

    @kopf.on.cleanup(id="cleanup", registry=registry)
    async def cleanup(memo: Any, **_: Any) -> None:
        runtime: Runtime | None = getattr(memo, "runtime", None)
        if runtime is not None and runtime.background is not None:
            runtime.background_stop.set()
            await runtime.background
        if runtime is not None and runtime.api is not None:
            await runtime.api.close()
        if runtime is not None:
            await runtime.scrape_fetch.close()

    def _index_of(kind: str) -> Any:
        def index(meta: Mapping[str, Any], body: Mapping[str, Any], **_: Any) -> dict[JobKey, ChildState] | None:
            key = _job_key(meta)
            return {key: summarize_child(kind, body)} if key else None

        return index

    child_indexes = []
    for group, version, plural, kind in CHILD_KINDS:
        fn = _index_of(kind)
        fn.__name__ = f"idx_{plural}"
        kopf.index(group, version, plural, labels=MANAGED, id=fn.__name__, registry=registry)(fn)
        child_indexes.append(fn.__name__)

    @kopf.index(*POD_KIND[:3], labels=MANAGED, id="idx_pods", registry=registry)
    def idx_pods(meta: Mapping[str, Any], body: Mapping[str, Any], **_: Any) -> dict[JobKey, PodState] | None:
        key = _job_key(meta)
        return {key: summarize_pod(body)} if key else None

    @kopf.index(*jobs, id="idx_jobs", registry=registry)
    def idx_jobs(meta: Mapping[str, Any], body: Mapping[str, Any], **_: Any) -> dict[JobKey, dict[str, Any]]:
        return {(meta.get("namespace", ""), meta.get("name", "")): _snapshot(body)}

    coalescer: Coalescer[JobKey] = Coalescer()

    async def run(key: JobKey, body: Mapping[str, Any], trigger: str, kwargs: Mapping[str, Any]) -> None:
        """Reconcile ``key``, or once more after its running reconcile (coalesce.py); a reconcile run
        again reads the newest job from the jobs index."""

        async def once(why: str, first: bool) -> bool:
            stored = kwargs["idx_jobs"].get(key)
            if not first and not stored:
                return False  # deleted meanwhile
            await run_once(key, body if first else _latest(stored, None), why, kwargs)
            return True

        await coalescer.run(key, trigger, once)

    async def run_once(key: JobKey, body: Mapping[str, Any], trigger: str, kwargs: Mapping[str, Any]) -> None:
        runtime: Runtime = kwargs["memo"].runtime
        assert runtime.api is not None
        kube = Kube(runtime.api, kwargs["logger"])
        observed = _observed(key, [kwargs[n] for n in child_indexes], kwargs["idx_pods"])
        metrics.RECONCILES.labels(trigger).inc()
        with metrics.RECONCILE_SECONDS.time():
            try:
                outcome = await reconcile(body, observed, runtime, kube, datetime.datetime.now(datetime.UTC))
            except Exception:
                metrics.RECONCILE_ERRORS.labels(trigger).inc()
                raise
        for type_, reason, message in outcome.events:
            try:
                await kube.event(body, type_, reason, message)
            except ApiError as exc:  # an Event is a report; failing to post one changes nothing
                kwargs["logger"].warning(f"could not post Event {reason}: {exc}")
        if outcome.actions:
            kwargs["logger"].info(f"reconciled ({trigger}): {', '.join(outcome.actions)}")

    @kopf.on.event(*jobs, id="job_event", registry=registry)
    async def job_event(
        event: Mapping[str, Any], body: Mapping[str, Any], meta: Mapping[str, Any], **kwargs: Any
    ) -> None:
        key = (meta.get("namespace", ""), meta.get("name", ""))
        if event.get("type") == "DELETED":
            kwargs["memo"].runtime.forget(key)
            metrics.forget_job(*key)
            return
        latest = kwargs["idx_jobs"].get(key)
        await run(key, _latest(latest, body), "event", kwargs)

    async def child_event(event: Mapping[str, Any], meta: Mapping[str, Any], **kwargs: Any) -> None:
        key = _job_key(meta)
        if key is None or key not in kwargs["idx_jobs"]:
            return
        if event.get("type") == "DELETED":
            kind = (event.get("object") or {}).get("kind", "")
            kwargs["memo"].runtime.written[key].pop((kind, meta.get("name", "")), None)
            kwargs["memo"].runtime.owned[key].pop((kind, meta.get("name", "")), None)
        await run(key, _latest(kwargs["idx_jobs"][key], None), "child", kwargs)

    for group, version, plural, _ in (*CHILD_KINDS, POD_KIND):
        kopf.on.event(group, version, plural, labels=MANAGED, id=f"child_{plural}", registry=registry)(child_event)

    del startup, cleanup, idx_pods, idx_jobs, job_event
    return registry


def _peering_paths(config: OperatorConfig) -> list[str]:
    """The peering objects Kopf keeps alive for this operator: one cluster-wide, or one per namespace."""
    if config.namespaces:
        return [f"apis/kopf.dev/v1/namespaces/{ns}/kopfpeerings/{config.peering_name}" for ns in config.namespaces]
    return [f"apis/kopf.dev/v1/clusterkopfpeerings/{config.peering_name}"]


def _snapshot(body: Mapping[str, Any]) -> dict[str, Any]:
    """The job as the index keeps it: a plain copy without ``metadata.managedFields``, which nothing reads
    and which is as large as the status (every status patch is an entry)."""
    out = {k: _plain(v) for k, v in body.items()}
    out["metadata"] = {k: v for k, v in out.get("metadata", {}).items() if k != "managedFields"}
    return out


def _plain(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def _latest(store: Iterable[dict[str, Any]] | None, fallback: Mapping[str, Any] | None) -> Mapping[str, Any]:
    """The newest body of a job from the jobs index (one object, so one value), else the handler's."""
    for body in store or ():
        return body
    assert fallback is not None
    return fallback
