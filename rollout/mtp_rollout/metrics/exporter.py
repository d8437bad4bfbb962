"""Prometheus gauges of the windowed acceptance figures, labelled by job and namespace.

Why a class over a given registry: the operator owns its metrics endpoint and registry; the
rollout only contributes series to it (and ``mtpjob run`` uses its own registry). A figure that
is undefined in a window (no drafts yet) removes its series rather than exporting NaN, so
dashboards show a gap instead of a fake zero.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge

from mtp_api.acceptance import WindowFigures
from mtp_rollout.metrics import metric_names as mn
from mtp_rollout.metrics.collector import ScrapeReport

LABELS = ("namespace", "job")


class AcceptanceExporter:
    """Gauges for every figure of ``WindowFigures``; ``publish`` updates one job's series."""

    def __init__(self, registry: CollectorRegistry) -> None:
        def gauge(name: str, doc: str, extra: tuple[str, ...] = ()) -> Gauge:
            return Gauge(name, doc, (*LABELS, *extra), registry=registry)

        self._scalars: dict[str, Gauge] = {
            "acceptance_rate": gauge(mn.ACCEPTANCE_RATE, "Accepted / drafted tokens over the window."),
            "mean_acceptance_length": gauge(
                mn.MEAN_ACCEPTANCE_LENGTH, "Tokens per verify step over the window: 1 + accepted / drafts."
            ),
            "draft_tokens_per_second": gauge(mn.DRAFT_TOKENS_PER_SECOND, "Drafted tokens per second."),
            "accepted_tokens_per_second": gauge(mn.ACCEPTED_TOKENS_PER_SECOND, "Accepted draft tokens per second."),
            "generation_tokens_per_second": gauge(mn.GENERATION_TOKENS_PER_SECOND, "Generated tokens per second."),
            "num_speculative_tokens": gauge(mn.NUM_SPECULATIVE_TOKENS, "Draft tokens per verify step (k)."),
            "expected_tokens_per_forward": gauge(
                mn.EXPECTED_TOKENS_PER_FORWARD,
                "(1 - a^(k+1)) / (1 - a): tokens per target forward for i.i.d. acceptance a.",
            ),
            "speedup_bound": gauge(
                mn.SPEEDUP_BOUND, "Mean acceptance length / (k*c + 1): the decoding speedup these figures allow."
            ),
        }
        self._window = gauge(mn.WINDOW_SECONDS, "Seconds of counter data behind the figures.")
        self._pods = gauge(mn.PODS_SCRAPED, "Rollout pods that answered the last scrape.")
        self._position = gauge(
            mn.POSITION_ACCEPTANCE_RATE, "Accepted tokens at draft position / drafts (unconditional).", ("position",)
        )
        self._errors = Counter(
            mn.SCRAPE_ERRORS.removesuffix("_total"),
            "Failed scrapes of rollout pods (timeouts, HTTP errors, garbage).",
            LABELS,
            registry=registry,
        )
        self._positions: dict[tuple[str, str], set[str]] = {}

    def publish(self, namespace: str, job: str, fig: WindowFigures, report: ScrapeReport | None = None) -> None:
        """Set (or remove, when undefined) every series of one job."""
        key = (namespace, job)
        for attr, g in self._scalars.items():
            value = getattr(fig, attr)
            if value is None:
                _remove(g, namespace, job)
            else:
                g.labels(namespace, job).set(value)
        self._window.labels(namespace, job).set(fig.seconds)
        positions = {str(p): v for p, v in fig.per_position.items()}
        for stale in self._positions.get(key, set()) - set(positions):
            _remove(self._position, namespace, job, stale)
        for pos, v in positions.items():
            self._position.labels(namespace, job, pos).set(v)
        self._positions[key] = set(positions)
        if report is not None:
            self._pods.labels(namespace, job).set(report.ok.get(key, 0))
            errors = report.errors.get(key, 0)
            counter = self._errors.labels(namespace, job)
            if errors:
                counter.inc(errors)

    def forget(self, namespace: str, job: str) -> None:
        """Remove every series of a deleted job."""
        for g in (*self._scalars.values(), self._window, self._pods):
            _remove(g, namespace, job)
        for pos in self._positions.pop((namespace, job), set()):
            _remove(self._position, namespace, job, pos)
        _remove(self._errors, namespace, job)


def _remove(metric: Gauge | Counter, *labels: str) -> None:
    try:
        metric.remove(*labels)
    except KeyError:
        pass
