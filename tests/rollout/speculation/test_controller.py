"""The closed loop on synthetic acceptance series, one window every 60 s.

Calibration ``TWO_SIZES`` (plain 10 ms / 20 ms at b=1 / b=8; k=1 1.15x / 1.6x; k=2 1.25x / 2.4x),
windows at batch size 1, so the gain of k drafts is E_k / multiple at b=1. The EWMA (alpha 0.5)
and the switch times are worked out by hand in each test.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Iterable, Sequence

import pytest

from mtp_rollout.speculation.controller import (
    AcceptanceWindow,
    ControllerConfig,
    ControllerState,
    Decision,
    decide,
    unconditional_from_depth_accuracy,
)
from mtp_rollout.speculation.cost_model import Calibration
from mtp_rollout.speculation.schedule import choose_schedule
from tests.rollout.speculation.calibrations import TWO_SIZES, make_cal

SPEC_RANGES = ((1, 7, 2), (8, 16, 1))  # what a good head gets (test_schedule)
HIGH, LOW = (0.8, 0.64), (0.02, 0.0)


def window(
    per_position: tuple[float, ...], engine: str | None, *, drafts: float = 1000, batch: float = 1.0
) -> AcceptanceWindow:
    """What the loop sees: the rollout's counters while it drafts, the trainer's accuracy while plain."""
    return AcceptanceWindow(per_position, drafts, "trainer" if engine == "plain" else "rollout", batch)


def run(
    acceptance: Callable[[float], tuple[float, ...]],
    times: Iterable[float],
    *,
    state: ControllerState | None = None,
    cal: Calibration = TWO_SIZES,
    safe: Callable[[float], bool] = lambda t: True,
    batch: float = 1.0,
    config: ControllerConfig | None = None,
) -> list[tuple[float, Decision]]:
    state = state or ControllerState()
    out = []
    for t in times:
        engine = state.schedule.engine if state.schedule else None
        d = decide(
            state,
            window(acceptance(t), engine, batch=batch),
            cal,
            now_s=t,
            at_safe_point=safe(t),
            max_k=2,
            max_batch=16,
            config=config or ControllerConfig(),
        )
        out.append((t, d))
        state = d.state
    return out


def applied(decisions: Sequence[tuple[float, Decision]]) -> list[tuple[float, str]]:
    return [(t, d.schedule.engine) for t, d in decisions if d.apply]


def test_collapse_goes_plain_after_the_dwell_and_stays_plain() -> None:
    decisions = run(lambda t: HIGH if t < 60 else LOW, range(0, 1800, 60))
    by_time = dict(decisions)
    assert by_time[0].apply and by_time[0].schedule.ranges == SPEC_RANGES
    # EWMA of position 0 / 1 from (0.8, 0.64) towards (0.02, 0): t=60 (0.41, 0.32), 120 (0.215, 0.16),
    # 180 (0.1175, 0.08), 240 (0.06875, 0.04), 300 (0.044375, 0.02). Running k=2 at b=1: (1 + s0 + s1) / 1.25.
    # t=180: 0.958; plain 1.0 does not beat 0.958 * 1.05 = 1.006 -> hysteresis
    assert by_time[180].predicted_gain_current == pytest.approx(1.1975 / 1.25)
    assert not by_time[180].apply and "hysteresis" in by_time[180].reason
    # t=240: 0.887 * 1.05 = 0.931 < 1.0, but only 240 s of the 300 s dwell have passed
    assert by_time[240].predicted_gain_current == pytest.approx(1.10875 / 1.25)
    assert not by_time[240].apply and "240 s of the 300 s dwell" in by_time[240].reason
    # t=300: the dwell is over -> plain; then it stays plain (the trainer keeps seeing 0.02)
    assert applied(decisions) == [(0, "speculative"), (300, "plain")]
    assert by_time[300].predicted_gain_current == pytest.approx(1.064375 / 1.25)
    assert by_time[300].reason.endswith("switching to plain decoding")
    assert "acceptance by position [0.04, 0.02]" in by_time[300].reason
    assert all(d.schedule.engine == "plain" for t, d in decisions if t >= 300)


def test_recovery_through_trainer_windows_brings_speculation_back() -> None:
    plain = choose_schedule(TWO_SIZES, LOW, max_k=2, max_batch=16)
    start = ControllerState(plain, 0.0, LOW)
    # trainer windows with few samples still count while plain (the rollout has nothing to say)
    decisions: list[tuple[float, Decision]] = []
    state = start
    for t in range(60, 1200, 60):
        engine = state.schedule.engine if state.schedule else None
        d = decide(
            state, window(HIGH, engine, drafts=50), TWO_SIZES, now_s=t, at_safe_point=True, max_k=2, max_batch=16
        )
        decisions.append((t, d))
        state = d.state
    by_time = dict(decisions)
    # t=60: EWMA (0.41, 0.32): k=2 gives 1.73 / 1.25 = 1.384 > 1.05, but the dwell holds it
    assert by_time[60].predicted_gain_new == pytest.approx(1.384)
    assert not by_time[60].apply
    # t=300 (five windows): s0 = 0.8 - 0.78 / 32 = 0.775625, s1 = 0.64 - 0.64 / 32 = 0.62
    assert by_time[300].state.smoothed == pytest.approx((0.775625, 0.62))
    assert by_time[300].predicted_gain_new == pytest.approx((1 + 0.775625 + 0.62) / 1.25)
    assert applied(decisions) == [(300, "speculative")]
    assert by_time[300].schedule.ranges == SPEC_RANGES
    assert all(d.schedule.engine == "speculative" for t, d in decisions if t >= 300)


# Near the k=1 / k=2 boundary at b=8: k=2 wins iff (1 + a + a^2) / (1 + a) > 2.128 / 1.6 = 1.33,
# i.e. at a = 0.80 (2.44 / 1.8 = 1.356) but not at a = 0.72 (2.2384 / 1.72 = 1.301).
BOUNDARY = make_cal({1: 0.010, 8: 0.020}, {1: {1: 1.15, 8: 1.6}, 2: {1: 1.25, 8: 2.128}})


def _head(a: float) -> tuple[float, float]:
    return (a, a * a)


def _changes(decisions: Sequence[tuple[float, Decision]]) -> int:
    return sum(d.apply for _, d in decisions) - 1  # the first apply is not a change


def test_alternating_noise_does_not_flap() -> None:
    noise = lambda t: _head(0.80 if int(t // 60) % 2 == 0 else 0.72)  # noqa: E731
    decisions = run(noise, range(0, 6000, 60), cal=BOUNDARY, batch=8.0)
    assert _changes(decisions) <= 1
    # not vacuous: without smoothing, hysteresis and dwell the same series flips k at b=8 every window
    brakes_off = ControllerConfig(min_dwell_s=0, hysteresis=0, ewma_alpha=1.0)
    raw = run(noise, range(0, 6000, 60), cal=BOUNDARY, batch=8.0, config=brakes_off)
    assert _changes(raw) == 99


def test_random_noise_does_not_flap() -> None:
    rng = random.Random(7)
    series: dict[float, tuple[float, ...]] = {t: _head(rng.uniform(0.7, 0.85)) for t in range(0, 6000, 60)}
    for batch in (1.0, 8.0):
        assert _changes(run(series.__getitem__, series, cal=BOUNDARY, batch=batch)) <= 1


def test_no_change_outside_safe_points() -> None:
    safe = lambda t: t % 420 == 0  # noqa: E731
    decisions = run(lambda t: HIGH if t < 60 else LOW, range(0, 1800, 60), safe=safe)
    assert all(safe(t) for t, d in decisions if d.apply)
    # ready at 300 (collapse test) but 300 is not a safe point: the switch waits for 420
    assert applied(decisions) == [(0, "speculative"), (420, "plain")]
    assert dict(decisions)[300].reason.endswith("until the next safe point")


def test_the_first_schedule_waits_for_a_safe_point() -> None:
    first = decide(
        ControllerState(), window(HIGH, None), TWO_SIZES, now_s=0, at_safe_point=False, max_k=2, max_batch=16
    )
    assert not first.apply and first.state.schedule is None
    assert first.schedule.ranges == SPEC_RANGES  # proposed
    assert "waits for a safe point" in first.reason
    second = decide(first.state, window(HIGH, None), TWO_SIZES, now_s=60, at_safe_point=True, max_k=2, max_batch=16)
    assert second.apply and second.state.since_s == 60
    # no evidence at all: the plain engine is the safe start
    empty = decide(ControllerState(), window((), None), TWO_SIZES, now_s=0, at_safe_point=True, max_k=2, max_batch=16)
    assert empty.apply and empty.schedule.engine == "plain"


def test_windows_with_too_few_drafts_are_ignored() -> None:
    running = choose_schedule(TWO_SIZES, HIGH, max_k=2, max_batch=16)
    state = ControllerState(running, 0.0, HIGH)
    for t in range(60, 1200, 60):
        d = decide(
            state, window(LOW, "speculative", drafts=199), TWO_SIZES, now_s=t, at_safe_point=True, max_k=2, max_batch=16
        )
        assert not d.apply
        assert d.state.smoothed == HIGH
        assert "199 drafts < min_drafts 200" in d.reason
        state = d.state
    counted = decide(
        state, window(LOW, "speculative", drafts=200), TWO_SIZES, now_s=1200, at_safe_point=True, max_k=2, max_batch=16
    )
    assert counted.state.smoothed == pytest.approx((0.41, 0.32))
    nan = decide(
        state,
        window(LOW, "speculative", drafts=math.nan),
        TWO_SIZES,
        now_s=1200,
        at_safe_point=True,
        max_k=2,
        max_batch=16,
    )
    assert nan.state.smoothed == HIGH


def test_each_source_counts_only_when_it_is_the_evidence() -> None:
    running = choose_schedule(TWO_SIZES, HIGH, max_k=2, max_batch=16)
    spec = ControllerState(running, 0.0, HIGH)
    trainer = AcceptanceWindow(LOW, 5000, "trainer", 1.0)
    d = decide(spec, trainer, TWO_SIZES, now_s=600, at_safe_point=True, max_k=2, max_batch=16)
    assert d.state.smoothed == HIGH and "trainer accuracy is not used while the engine drafts" in d.reason
    plain = ControllerState(choose_schedule(TWO_SIZES, LOW, max_k=2, max_batch=16), 0.0, LOW)
    rollout = AcceptanceWindow(HIGH, 5000, "rollout", 1.0)
    d = decide(plain, rollout, TWO_SIZES, now_s=600, at_safe_point=True, max_k=2, max_batch=16)
    assert d.state.smoothed == LOW and "a plain engine drafts nothing" in d.reason


def test_positions_missing_from_a_window_keep_their_smoothed_value() -> None:
    running = choose_schedule(TWO_SIZES, HIGH, max_k=2, max_batch=16)
    d = decide(
        ControllerState(running, 0.0, HIGH),
        window((0.4,), "speculative"),
        TWO_SIZES,
        now_s=60,
        at_safe_point=True,
        max_k=2,
        max_batch=16,
    )
    assert d.state.smoothed == pytest.approx((0.6, 0.64))  # 0.5 * 0.4 + 0.5 * 0.8; position 1 kept


def test_unknown_batch_size_weighs_every_calibrated_size() -> None:
    d = decide(
        ControllerState(),
        window(HIGH, None, batch=math.nan),
        TWO_SIZES,
        now_s=0,
        at_safe_point=True,
        max_k=2,
        max_batch=16,
    )
    # b=1: 2.44 / 1.25 = 1.952; b=8: k=1 1.8 / 1.6 = 1.125 -> mean 1.5385
    assert d.predicted_gain_new == pytest.approx((1.952 + 1.125) / 2)
    assert "over the calibrated batch sizes" in d.reason


def test_decisions_are_deterministic() -> None:
    args = (ControllerState(), window(HIGH, None), TWO_SIZES)
    assert decide(*args, now_s=0, at_safe_point=True, max_k=2, max_batch=16) == decide(
        *args, now_s=0, at_safe_point=True, max_k=2, max_batch=16
    )


def test_config_is_validated() -> None:
    with pytest.raises(ValueError, match="ewma_alpha"):
        ControllerConfig(ewma_alpha=0)
    with pytest.raises(ValueError, match=">= 0"):
        ControllerConfig(hysteresis=-0.1)


def test_depth_accuracy_to_unconditional_acceptance() -> None:
    assert unconditional_from_depth_accuracy([0.8, 0.8]) == pytest.approx((0.8, 0.64))
    assert unconditional_from_depth_accuracy([0.9, math.nan, 0.9]) == pytest.approx((0.9, 0.0, 0.0))
    assert unconditional_from_depth_accuracy([1.2, 0.5]) == pytest.approx((1.0, 0.5))
