"""Rounded RolloutStatus fields and the write rate-limit policy."""

from __future__ import annotations

from mtp_api.acceptance import Increments, WindowFigures
from mtp_api.types import RolloutStatus
from mtp_rollout.metrics.status import StatusWritePolicy, rollout_status


def fig(drafts=100.0, draft_tokens=300.0, accepted=123.0, per_pos=None, gen=4567.0, seconds=10.0) -> WindowFigures:
    per_pos = {0: 60.0, 1: 40.0, 2: 23.0} if per_pos is None else per_pos
    return WindowFigures(seconds, Increments(drafts, draft_tokens, accepted, per_pos, gen))


def test_rounding():
    s = rollout_status(fig(), ready_replicas=2)
    assert s == RolloutStatus(
        ready_replicas=2,
        acceptance_rate=0.41,
        mean_acceptance_length=2.23,
        per_position_acceptance=[0.6, 0.4, 0.23],
        tokens_per_second=460.0,
    )
    # The wire form is what `kubectl get -o yaml` shows.
    assert s.wire()["acceptanceRate"] == 0.41


def test_small_jitter_rounds_to_the_same_status():
    assert rollout_status(fig(accepted=123.0), 1) == rollout_status(fig(accepted=123.2, gen=4570.0), 1)


def test_undefined_window_leaves_fields_unset():
    s = rollout_status(WindowFigures(0.0, Increments()), 1)
    assert s.acceptance_rate is None and s.mean_acceptance_length is None
    assert s.per_position_acceptance is None and s.tokens_per_second is None


def test_missing_position_truncates_the_list():
    s = rollout_status(fig(per_pos={0: 60.0, 2: 23.0}), 1)
    assert s.per_position_acceptance == [0.6]


def test_write_policy():
    policy = StatusWritePolicy(min_interval_s=60)
    a = rollout_status(fig(), 1)
    b = rollout_status(fig(accepted=200.0), 1)
    assert policy.should_write(None, None, a, now=0)
    assert not policy.should_write(a, 0, a, now=1000)  # unchanged: never
    assert not policy.should_write(a, 0, b, now=30)  # changed, too soon
    assert policy.should_write(a, 0, b, now=60)
    assert policy.should_write(a, 0, rollout_status(fig(), 2), now=1)  # replicas: at once
    empty = rollout_status(WindowFigures(0.0, Increments()), 1)
    assert policy.should_write(empty, 0, a, now=1)  # first figures: at once
