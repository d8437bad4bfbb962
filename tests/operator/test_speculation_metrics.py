"""The operator's auto-k series follow status.speculation: values when known, no series when not."""

from __future__ import annotations

from prometheus_client import generate_latest

from mtp_api import types as t
from mtp_api.exposition import parse
from mtp_operator import metrics


def _series(name: str) -> dict[str, float]:
    samples = parse(generate_latest(metrics.REGISTRY).decode()).samples
    return {s.name: s.value for s in samples if s.label("name") == name and s.name.startswith("mtptrainingjob_spec")}


def test_speculation_series_follow_the_status() -> None:
    plain = t.SpeculationStatus(engine=t.SpeculationEngine.PLAIN, predicted_gain=1.0, measured_gain=0.81)
    metrics.observe_speculation("ns", "job-a", plain)
    assert _series("job-a") == {
        "mtptrainingjob_speculation_measured_gain": 0.81,
        "mtptrainingjob_speculation_predicted_gain": 1.0,
        "mtptrainingjob_speculation_max_k": 0.0,
    }
    ranges = [t.ScheduleRange(from_batch=1, to_batch=3, k=2), t.ScheduleRange(from_batch=4, to_batch=256, k=1)]
    spec = t.SpeculationStatus(engine=t.SpeculationEngine.SPECULATIVE, schedule=ranges, predicted_gain=1.4)
    metrics.observe_speculation("ns", "job-a", spec)  # no traffic: the measured gain is unknown, not 0
    assert _series("job-a") == {
        "mtptrainingjob_speculation_predicted_gain": 1.4,
        "mtptrainingjob_speculation_max_k": 2.0,
    }
    metrics.forget_job("ns", "job-a")
    assert _series("job-a") == {}
