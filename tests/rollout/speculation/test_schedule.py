"""Schedule choice: k per batch size, plain vs speculative, merged ranges, vLLM's config shape, and
vLLM's own validator on every schedule produced for seeded random calibrations.

Expected gains are worked out by hand in the comments (gain = E_k / step-time multiple).
"""

from __future__ import annotations

import random

import pytest
from vllm.v1.spec_decode.dynamic.utils import (
    build_dynamic_sd_schedule_lookup,
    validate_and_normalize_dynamic_sd_schedule,
)

from mtp_rollout.speculation.cost_model import Calibration
from mtp_rollout.speculation.schedule import Schedule, choose_schedule, evaluate, to_vllm
from tests.rollout.speculation.calibrations import TWO_SIZES, make_cal

GOOD = [0.85, 0.7]  # E1 = 1.85, E2 = 2.55
COLLAPSED = [0.02, 0.0]  # E1 = E2 = 1.02


def test_a_good_head_drafts_more_at_small_batches() -> None:
    # b=1: k0 0.75, k1 1.85 / 1.15 = 1.6087, k2 2.55 / 1.25 = 2.04 -> k=2
    # b=8: k0 0.75, k1 1.85 / 1.6 = 1.15625, k2 2.55 / 2.4 = 1.0625 -> k=1
    s = choose_schedule(TWO_SIZES, GOOD, max_k=3, max_batch=16)
    assert s.engine == "speculative"
    assert s.max_k == 2  # the calibration's max_k caps the caller's 3
    assert s.ranges == ((1, 7, 2), (8, 16, 1))
    assert s.predicted_gain == pytest.approx({1: 2.04, 8: 1.15625})
    assert s.weighted_gain == pytest.approx((2.04 + 1.15625) / 2)
    assert s.describe() == "speculative: k=2 for 1-7, k=1 for 8-16"


def test_k0_where_drafting_loses_but_that_batch_size_carries_no_weight() -> None:
    # b=8 saturated: k1 3.0x, k2 4.0x -> 1.85 / 3 = 0.617, 2.55 / 4 = 0.6375 < k0's 0.75 -> k=0
    cal = make_cal({1: 0.010, 8: 0.020}, {1: {1: 1.15, 8: 3.0}, 2: {1: 1.25, 8: 4.0}})
    s = choose_schedule(cal, GOOD, max_k=2, max_batch=256, batch_weights={1: 1.0})
    assert s.ranges == ((1, 7, 2), (8, 256, 0))
    assert s.weighted_gain == pytest.approx(2.04)  # only b=1 weighs
    assert s.describe() == "speculative: k=2 for 1-7, k=0 for 8-256"
    # uniform weights: b=8 loses 25% > margin, so the plain engine (k=0 is not free)
    plain = choose_schedule(cal, GOOD, max_k=2, max_batch=256)
    assert plain.engine == "plain"
    assert plain.weighted_gain == 1.0


def test_a_collapsed_head_gives_the_plain_engine() -> None:
    # b=1: k1 1.02 / 1.15 = 0.887, k2 1.02 / 1.25 = 0.816; b=8 lower still: nothing beats plain
    s = choose_schedule(TWO_SIZES, COLLAPSED, max_k=2, max_batch=16)
    assert s.engine == "plain"
    assert s.ranges == ()
    assert s.predicted_gain == {1: 1.0, 8: 1.0}
    assert s.describe() == "plain decoding"
    assert to_vllm(s) is None


def test_the_margin_keeps_plain_for_a_marginal_gain() -> None:
    # weight only at b=8: k1 (1 + 0.632) / 1.6 = 1.02, k2 1.632 / 2.4 = 0.68 -> 1.02 < 1 + 0.03
    assert choose_schedule(TWO_SIZES, [0.632, 0.0], max_k=2, max_batch=16, batch_weights={8: 1}).engine == "plain"
    s = choose_schedule(TWO_SIZES, [0.632, 0.0], max_k=2, max_batch=16, batch_weights={8: 1}, margin=0.01)
    assert s.engine == "speculative"
    assert s.weighted_gain == pytest.approx(1.02)


def test_ties_go_to_the_smaller_k() -> None:
    # position 1 never accepted and k=2 costs what k=1 costs: E1 = E2 = 1.5, same gain 1.5 / 1.15
    cal = make_cal({1: 0.010}, {1: {1: 1.15}, 2: {1: 1.15}})
    s = choose_schedule(cal, [0.5, 0.0], max_k=2, max_batch=8)
    assert s.ranges == ((1, 8, 1),)


def test_weights_of_uncalibrated_sizes_go_to_the_nearest_calibrated_size() -> None:
    # 7 is nearer 8 than 1: weighted gain = b=8's 1.15625; 3 is nearer 1: 2.04; 2 and 6: the mean
    assert choose_schedule(TWO_SIZES, GOOD, max_k=2, max_batch=16, batch_weights={7: 1}).weighted_gain == pytest.approx(
        1.15625
    )
    assert choose_schedule(TWO_SIZES, GOOD, max_k=2, max_batch=16, batch_weights={3: 5}).weighted_gain == pytest.approx(
        2.04
    )
    assert choose_schedule(
        TWO_SIZES, GOOD, max_k=2, max_batch=16, batch_weights={2: 1, 6: 1}
    ).weighted_gain == pytest.approx((2.04 + 1.15625) / 2)
    with pytest.raises(ValueError, match="at least one weight"):
        choose_schedule(TWO_SIZES, GOOD, max_k=2, max_batch=16, batch_weights={1: 0})
    with pytest.raises(ValueError, match="finite number >= 0"):
        choose_schedule(TWO_SIZES, GOOD, max_k=2, max_batch=16, batch_weights={1: -1})


def test_equal_k_ranges_are_merged() -> None:
    # b=1, 2: k1 1.85 / 1.15 = 1.61, k2 2.55 / 1.25 = 2.04 -> k=2; b=4, 8: 1.15625 vs 1.0625 -> k=1
    small, large = {1: 1.15, 2: 1.15, 4: 1.6, 8: 1.6}, {1: 1.25, 2: 1.25, 4: 2.4, 8: 2.4}
    cal = make_cal({1: 0.010, 2: 0.011, 4: 0.013, 8: 0.020}, {1: small, 2: large})
    s = choose_schedule(cal, GOOD, max_k=2, max_batch=64)
    assert s.ranges == ((1, 3, 2), (4, 64, 1))
    assert set(s.predicted_gain) == {1, 2, 4, 8}


def test_calibrated_sizes_above_max_batch_own_nothing() -> None:
    s = choose_schedule(TWO_SIZES, GOOD, max_k=2, max_batch=4)
    assert s.ranges == ((1, 4, 2),)
    assert s.predicted_gain == pytest.approx({1: 2.04})
    assert to_vllm(s) == {"method": "mtp", "num_speculative_tokens": 2}


def test_max_k_caps_the_drafts() -> None:
    # k=1 only: 1.6087 at b=1, 1.15625 at b=8 -> one k everywhere
    s = choose_schedule(TWO_SIZES, GOOD, max_k=1, max_batch=16)
    assert s.ranges == ((1, 16, 1),)
    assert to_vllm(s) == {"method": "mtp", "num_speculative_tokens": 1}
    assert choose_schedule(TWO_SIZES, GOOD, max_k=0, max_batch=16).engine == "plain"


def test_to_vllm_shapes() -> None:
    mixed = Schedule("speculative", 3, ((1, 3, 3), (4, 15, 1), (16, 64, 0)), {}, 1.5)
    assert to_vllm(mixed) == {
        "method": "mtp",
        "num_speculative_tokens": 3,
        "num_speculative_tokens_per_batch_size": [[1, 3, 3], [4, 15, 1], [16, 64, 0]],
    }
    fixed = Schedule("speculative", 3, ((1, 64, 2),), {}, 1.5)
    assert to_vllm(fixed) == {"method": "mtp", "num_speculative_tokens": 2}
    # all zero is not "fixed k": num_speculative_tokens must be >= 1, so the ranges say 0
    zero = Schedule("speculative", 3, ((1, 64, 0),), {}, 0.75)
    assert to_vllm(zero) == {
        "method": "mtp",
        "num_speculative_tokens": 1,
        "num_speculative_tokens_per_batch_size": [[1, 64, 0]],
    }
    assert to_vllm(Schedule("plain", 3, (), {}, 1.0)) is None


def test_schedule_json_round_trip_and_validation() -> None:
    s = choose_schedule(TWO_SIZES, GOOD, max_k=2, max_batch=16)
    assert Schedule.from_json(s.to_json()) == s
    assert s.to_json()["ranges"] == [[1, 7, 2], [8, 16, 1]]
    with pytest.raises(ValueError, match=r"schedule\.ranges: missing"):
        Schedule.from_json({"engine": "plain", "max_k": 2, "predicted_gain": {}, "weighted_gain": 1.0})
    with pytest.raises(ValueError, match="start at batch size 1"):
        Schedule("speculative", 2, ((2, 8, 1),), {}, 1.0)
    with pytest.raises(ValueError, match=r"ranges\[1\]"):
        Schedule("speculative", 2, ((1, 8, 1), (8, 16, 1)), {}, 1.0)
    with pytest.raises(ValueError, match="empty for the plain engine"):
        Schedule("plain", 2, ((1, 8, 1),), {}, 1.0)


def test_evaluate_recomputes_a_schedule_under_new_acceptance() -> None:
    running = choose_schedule(TWO_SIZES, GOOD, max_k=2, max_batch=16)
    # the same ranges under a collapsed head: k=2 at b=1 -> 1.02 / 1.25, k=1 at b=8 -> 1.02 / 1.6
    now = evaluate(TWO_SIZES, COLLAPSED, running, max_batch=16)
    assert now.ranges == running.ranges
    assert now.predicted_gain == pytest.approx({1: 0.816, 8: 0.6375})
    # a schedule with k above the calibration's max_k is read as max_k (vLLM clips it the same way)
    wide = Schedule("speculative", 5, ((1, 16, 5),), {}, 0.0)
    assert evaluate(TWO_SIZES, GOOD, wide, max_batch=16).predicted_gain == pytest.approx({1: 2.04, 8: 1.0625})


def _random_calibration(rng: random.Random) -> Calibration:
    sizes = sorted(rng.sample(range(1, 300), rng.randint(1, 5)))
    max_k = rng.randint(1, 4)
    plain = {b: 0.01 * (1 + b / 50) for b in sizes}
    mult = {k: {b: 1.0 + k * rng.uniform(0.02, 0.6) * (1 + b / 64) for b in sizes} for k in range(1, max_k + 1)}
    return make_cal(plain, mult)


def test_vllms_validator_accepts_every_schedule_produced() -> None:
    rng = random.Random(20250601)
    dynamic = fixed = plain = 0
    for _ in range(300):
        cal = _random_calibration(rng)
        first = rng.uniform(0.0, 1.0)
        per_position = [first * rng.uniform(0.5, 1.0) ** i for i in range(rng.randint(0, 4))]
        max_batch = rng.randint(1, 512)
        weights = None if rng.random() < 0.5 else {rng.randint(1, 400): rng.uniform(0.1, 1.0) for _ in range(3)}
        s = choose_schedule(cal, per_position, max_k=rng.randint(0, 5), max_batch=max_batch, batch_weights=weights)
        config = to_vllm(s)
        if config is None:
            plain += 1
            continue
        k_top = config["num_speculative_tokens"]
        assert k_top >= 1
        ranges = config.get("num_speculative_tokens_per_batch_size")
        if ranges is None:
            fixed += 1
            assert all(s.k_at(b) == k_top for b in range(1, max_batch + 1))
            continue
        dynamic += 1
        assert validate_and_normalize_dynamic_sd_schedule(ranges) == [tuple(r) for r in ranges]
        dense = build_dynamic_sd_schedule_lookup(ranges, max_batch, k_top)
        assert dense[1:] == [s.k_at(b) for b in range(1, max_batch + 1)]
    assert min(dynamic, fixed, plain) >= 10, (dynamic, fixed, plain)  # every shape was exercised
