"""The typed settings and the metrics store: small, but every other part relies on them."""

from __future__ import annotations

import threading
from typing import Any

import pytest
from pydantic import ValidationError

from mtp_api import types as t
from mtp_operator.metrics_store import JobMetrics, LatestMetrics
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


class PausingDict(dict[tuple[str, str], t.TrainerStatus]):
    """The store's trainer dict, pausing inside ``pop`` so another thread can run mid-``drop``."""

    def __init__(self, mid_drop: threading.Event, reader_done: threading.Event) -> None:
        super().__init__()
        self.mid_drop, self.reader_done = mid_drop, reader_done

    def pop(self, *args: Any) -> Any:
        value = super().pop(*args)
        self.mid_drop.set()
        self.reader_done.wait(0.3)  # with the lock the reader is blocked until drop ends: this times out
        return value


def test_metrics_store_drop_is_atomic_for_readers() -> None:
    """A reader never sees a half-dropped job: the trainer gone but the rollout still there.

    ``drop`` removes the trainer, then the rollout. A hook pauses it between the two and a reader
    thread calls ``get`` right then: without the lock it sees (None, rollout); with it, it waits.
    """
    store = LatestMetrics()
    mid_drop, reader_done = threading.Event(), threading.Event()
    store._trainer = PausingDict(mid_drop, reader_done)
    store.put_trainer("ns", "a", t.TrainerStatus(step=3))
    store.put_rollout("ns", "a", t.RolloutStatus(acceptance_rate=0.5))
    seen: list[JobMetrics] = []

    def reader() -> None:
        assert mid_drop.wait(10)
        seen.append(store.get("ns", "a"))
        reader_done.set()

    th = threading.Thread(target=reader)
    th.start()
    store.drop("ns", "a")
    th.join(10)
    assert seen == [JobMetrics(trainer=None, rollout=None)]
