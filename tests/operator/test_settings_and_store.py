"""The typed settings and the metrics store: small, but every other part relies on them."""

from __future__ import annotations

import threading

import pytest
from pydantic import ValidationError

from mtp_api import types as t
from mtp_operator.metrics_store import LatestMetrics
from mtp_operator.settings import OperatorConfig


def test_settings_from_env() -> None:
    cfg = OperatorConfig.from_env(
        {
            "MTP_OPERATOR_NAMESPACES": "a, b,",
            "MTP_OPERATOR_RESYNC_SECONDS": "15",
            "MTP_OPERATOR_STANDALONE": "true",
            "UNRELATED": "x",
        }
    )
    assert cfg.namespaces == ("a", "b") and cfg.resync_seconds == 15.0 and cfg.standalone is True
    with pytest.raises(ValidationError):
        OperatorConfig.from_env({"MTP_OPERATOR_RESYNC_SECONDS": "0"})
    with pytest.raises(ValidationError):
        cfg.model_copy(update={}).__setattr__("standalone", False)


def test_two_processes_get_distinct_peering_priorities() -> None:
    assert len({OperatorConfig().peering_priority for _ in range(20)}) > 1


def test_metrics_store_keeps_latest_per_job_and_drops() -> None:
    store = LatestMetrics()
    store.put_rollout("ns", "a", t.RolloutStatus(acceptance_rate=0.5))
    store.put_rollout("ns", "a", t.RolloutStatus(acceptance_rate=0.7))
    store.put_trainer("ns", "a", t.TrainerStatus(step=3))
    got = store.get("ns", "a")
    assert got.rollout is not None and got.rollout.acceptance_rate == 0.7
    assert got.trainer is not None and got.trainer.step == 3
    assert store.get("ns", "b").rollout is None and len(store) == 1
    store.drop("ns", "a")
    assert store.get("ns", "a").trainer is None and len(store) == 0


def test_metrics_store_is_thread_safe() -> None:
    store = LatestMetrics()

    def writer(i: int) -> None:
        for step in range(500):
            store.put_trainer("ns", f"j{i}", t.TrainerStatus(step=step))

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert [store.get("ns", f"j{i}").trainer.step for i in range(4)] == [499] * 4  # type: ignore[union-attr]
