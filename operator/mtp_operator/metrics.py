"""The operator's own Prometheus metrics (prometheus-client), on a registry of its own.

Reconcile count, errors and latency describe the control loop; ``mtptrainingjob_info`` and
``mtptrainingjob_condition`` describe the jobs, following KubeRay's ``<kind>_info`` plus
``<kind>_condition`` pattern so dashboards can join on ``namespace``/``name``.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from mtp_api import types as t
from mtp_rollout.interface import AcceptanceExporter

REGISTRY = CollectorRegistry(auto_describe=True)

# Windowed MTP acceptance per job (``mtp_rollout:*`` gauges), filled by the per-job scrape daemons.
ACCEPTANCE = AcceptanceExporter(REGISTRY)

RECONCILES = Counter(
    "mtp_operator_reconcile", "Reconciles run, by what triggered them.", ["trigger"], registry=REGISTRY
)
RECONCILE_ERRORS = Counter(
    "mtp_operator_reconcile_errors", "Reconciles that raised, by trigger.", ["trigger"], registry=REGISTRY
)
RECONCILE_SECONDS = Histogram(
    "mtp_operator_reconcile_duration_seconds",
    "Wall time of one reconcile, API calls included.",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
    registry=REGISTRY,
)
CHILD_WRITES = Counter(
    "mtp_operator_child_writes",
    "Writes to children and status, by kind and verb.",
    ["kind", "verb"],
    registry=REGISTRY,
)
JOB_INFO = Gauge(
    "mtptrainingjob_info",
    "One series per MTPTrainingJob; its labels carry the pipeline, MTP training mode and state.",
    ["namespace", "name", "pipeline", "training_mode", "state"],
    registry=REGISTRY,
)
JOB_CONDITION = Gauge(
    "mtptrainingjob_condition",
    "1 when the job's condition is True, 0 when False or Unknown.",
    ["namespace", "name", "condition"],
    registry=REGISTRY,
)

# numSpeculativeTokens: auto (status.speculation): the gain measured against the calibrated plain rate,
# the running schedule's predicted gain, and its largest k (0: the plain engine).
SPECULATION_MEASURED_GAIN = Gauge(
    "mtptrainingjob_speculation_measured_gain",
    "Generated tokens/s over the calibrated plain-decoding rate at the same batch size (auto k).",
    ["namespace", "name"],
    registry=REGISTRY,
)
SPECULATION_PREDICTED_GAIN = Gauge(
    "mtptrainingjob_speculation_predicted_gain",
    "The cost model's gain of the running k schedule against plain decoding (auto k).",
    ["namespace", "name"],
    registry=REGISTRY,
)
SPECULATION_MAX_K = Gauge(
    "mtptrainingjob_speculation_max_k",
    "The largest k of the running schedule; 0 when the rollout decodes without speculation (auto k).",
    ["namespace", "name"],
    registry=REGISTRY,
)
_SPECULATION = (SPECULATION_MEASURED_GAIN, SPECULATION_PREDICTED_GAIN, SPECULATION_MAX_K)

_info_labels: dict[tuple[str, str], tuple[str, ...]] = {}


def observe_job(namespace: str, name: str, job: t.MTPTrainingJob | None, status: t.MTPTrainingJobStatus) -> None:
    """Set the job's info and condition series, replacing its previous info series."""
    pipeline = str(job.spec.pipeline) if job else ""
    mode = str(job.spec.trainer.mtp.training_mode) if job else ""
    labels = (namespace, name, pipeline, mode, str(status.state or ""))
    previous = _info_labels.get((namespace, name))
    if previous is not None and previous != labels:
        JOB_INFO.remove(*previous)
    JOB_INFO.labels(*labels).set(1)
    _info_labels[(namespace, name)] = labels
    present = {c.type: c.status for c in status.conditions}
    for ctype in t.ConditionType:
        JOB_CONDITION.labels(namespace, name, str(ctype)).set(1 if present.get(ctype) == "True" else 0)
    observe_speculation(namespace, name, status.speculation)


def observe_speculation(namespace: str, name: str, spec: t.SpeculationStatus | None) -> None:
    """The auto-k series of one job; a figure that is unknown has no series (not a fake 0)."""
    values: tuple[float | None, ...] = (None, None, None)
    if spec is not None:
        max_k = 0 if spec.engine == t.SpeculationEngine.PLAIN else max((r.k for r in spec.schedule), default=0)
        values = (spec.measured_gain, spec.predicted_gain, max_k)
    for gauge, value in zip(_SPECULATION, values, strict=True):
        if value is None:
            _remove(gauge, namespace, name)
        else:
            gauge.labels(namespace, name).set(value)


def _remove(gauge: Gauge, *labels: str) -> None:
    try:
        gauge.remove(*labels)
    except KeyError:
        pass


def forget_job(namespace: str, name: str) -> None:
    previous = _info_labels.pop((namespace, name), None)
    if previous is not None:
        JOB_INFO.remove(*previous)
    for ctype in t.ConditionType:
        _remove(JOB_CONDITION, namespace, name, str(ctype))
    observe_speculation(namespace, name, None)


def serve(port: int) -> None:
    """Expose ``/metrics`` on ``port`` (a daemon thread of prometheus-client)."""
    if port:
        start_http_server(port, registry=REGISTRY)
