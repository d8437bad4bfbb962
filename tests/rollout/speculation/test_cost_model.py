"""Cost model: expected tokens, extrapolation, garbage acceptance, step-time interpolation, predictions,
and the calibration file (round trip, and an error naming the field for each way it can be wrong).

Every expected value is computed by hand in the test, never by the code under test.
"""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path
from typing import Any

import pytest

from mtp_rollout.speculation.cost_model import (
    Calibration,
    CalibrationError,
    expected_tokens_per_step,
    predicted_gain,
    predicted_tokens_per_s,
    sanitize,
    step_seconds,
)
from tests.rollout.speculation.calibrations import TWO_SIZES, make_cal


@pytest.mark.parametrize(("k", "expected"), [(0, 1.0), (1, 1.9), (2, 2.5), (3, 2.8)])
def test_expected_tokens_of_a_measured_list(k: int, expected: float) -> None:
    # 1 + 0.9 = 1.9; + 0.6 = 2.5; + 0.3 = 2.8
    assert expected_tokens_per_step([0.9, 0.6, 0.3], k) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("per_position", "k", "expected"),
    [
        # r = 0.4 / 0.8 = 0.5: positions 0.8, 0.4, 0.2, 0.1 -> 1 + 1.5
        ([0.8, 0.4], 4, 2.5),
        # one position: r = p[0] = 0.5: 0.5, 0.25, 0.125 -> 1.875
        ([0.5], 3, 1.875),
        # nothing measured: nothing accepted
        ([], 3, 1.0),
        # r = 0 / 0.5: the head stops at position 1
        ([0.5, 0.0], 4, 1.5),
    ],
)
def test_extrapolation_past_the_measured_positions(per_position: list[float], k: int, expected: float) -> None:
    assert expected_tokens_per_step(per_position, k) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("per_position", "cleaned"),
    [
        ([math.nan, 0.5], (0.0, 0.0)),  # NaN is 0, and position 1 cannot exceed position 0
        ([1.5, 0.4], (1.0, 0.4)),  # above 1 is clamped
        ([0.3, 0.6], (0.3, 0.3)),  # a rise is noise: the running minimum
        ([-0.2, 0.5], (0.0, 0.0)),  # negative is clamped to 0
        ([math.inf, -math.inf], (1.0, 0.0)),
        ([None, "x", 0.5], (0.0, 0.0, 0.0)),  # not numbers at all
    ],
)
def test_garbage_acceptance_is_cleaned(per_position: list[Any], cleaned: tuple[float, ...]) -> None:
    assert sanitize(per_position) == cleaned


def test_garbage_never_gives_more_than_one_token_per_draft() -> None:
    assert expected_tokens_per_step([1.5, 0.4], 2) == pytest.approx(2.4)  # 1 + 1.0 + 0.4
    # increasing [0.3, 0.6] -> [0.3, 0.3], r = 1: four positions of 0.3
    assert expected_tokens_per_step([0.3, 0.6], 4) == pytest.approx(2.2)
    assert expected_tokens_per_step([math.nan, math.nan], 3) == 1.0
    assert expected_tokens_per_step([5.0] * 3, 6) == pytest.approx(7.0)  # at most k + 1 tokens
    with pytest.raises(ValueError, match="k must be >= 0"):
        expected_tokens_per_step([0.5], -1)


def test_step_times_are_linear_between_calibrated_sizes_and_clamped_outside() -> None:
    cal = make_cal({1: 0.010, 8: 0.024}, {1: {1: 1.5, 8: 2.0}})
    # b = 4.5 is half-way from 1 to 8: 0.010 + 0.5 * (0.024 - 0.010) = 0.017
    assert step_seconds(cal, None, 4.5) == pytest.approx(0.017)
    # k=1: 0.015 at b=1, 0.048 at b=8; b = 2.4 is 1.4/7 = 0.2 of the way: 0.015 + 0.2 * 0.033
    assert step_seconds(cal, 1, 2.4) == pytest.approx(0.0216)
    assert step_seconds(cal, None, 8) == pytest.approx(0.024)
    assert step_seconds(cal, None, 0.5) == pytest.approx(0.010)  # below the smallest: clamped
    assert step_seconds(cal, None, 100) == pytest.approx(0.024)  # above the largest: clamped
    assert step_seconds(cal, 0, 1) == pytest.approx(0.010 / 0.75)
    with pytest.raises(ValueError, match=r"outside the calibrated 0\.\.1"):
        step_seconds(cal, 2, 1)


def test_predictions_by_hand_for_two_batch_sizes() -> None:
    cal = TWO_SIZES  # plain 10 ms at b=1, 20 ms at b=8; k=1 1.15x / 1.6x; k=2 1.25x / 2.4x
    good = [0.85, 0.7]  # E1 = 1.85, E2 = 2.55
    assert predicted_tokens_per_s(cal, good, None, 1) == pytest.approx(100.0)  # 1 / 0.010
    assert predicted_tokens_per_s(cal, good, None, 8) == pytest.approx(400.0)  # 8 / 0.020
    assert predicted_tokens_per_s(cal, good, 2, 1) == pytest.approx(2.55 / 0.0125)  # 204
    assert predicted_tokens_per_s(cal, good, 1, 8) == pytest.approx(8 * 1.85 / 0.032)  # 462.5
    assert predicted_gain(cal, good, 2, 1) == pytest.approx(2.04)  # 2.55 / 1.25
    assert predicted_gain(cal, good, 1, 8) == pytest.approx(1.15625)  # 1.85 / 1.6
    assert predicted_gain(cal, good, 2, 8) == pytest.approx(1.0625)  # 2.55 / 2.4
    assert predicted_gain(cal, good, 0, 8) == pytest.approx(0.75)  # k=0 in a speculative engine
    assert predicted_gain(cal, good, None, 8) == 1.0
    # b = 4.5: plain 0.015 s; k=1 0.0115 + 0.5 * (0.032 - 0.0115) = 0.02175 s -> 1.85 * 0.015 / 0.02175
    assert predicted_gain(cal, good, 1, 4.5) == pytest.approx(1.85 * 0.015 / 0.02175)
    with pytest.raises(ValueError, match="positive"):
        predicted_tokens_per_s(cal, good, 1, 0)


# --- the calibration file -------------------------------------------------------------------------


def _raw() -> dict[str, Any]:
    return {
        "model": "tiny",
        "hardware": "cpu",
        "dtype": "float32",
        "max_k": 2,
        "batch_sizes": [1, 4],
        "plain_step_s": {"1": 0.01, "4": 0.02},
        "spec_step_s": {
            "0": {"1": 0.013, "4": 0.026},
            "1": {"1": 0.012, "4": 0.03},
            "2": {"1": 0.014, "4": 0.04},
        },
        "created": "2025-06-01T12:00:00+00:00",
        "notes": "hand-made",
    }


def test_json_round_trip_and_string_keys(tmp_path: Path) -> None:
    cal = Calibration.from_json(_raw())
    assert cal.batch_sizes == (1, 4)
    assert cal.plain_step_s == {1: 0.01, 4: 0.02}
    assert cal.spec_step_s[2] == {1: 0.014, 4: 0.04}
    assert cal.to_json() == _raw()
    assert Calibration.from_json(json.loads(json.dumps(cal.to_json()))) == cal
    path = tmp_path / "calibration.json"
    cal.save(path)
    assert Calibration.load(path) == cal
    raw = _raw()
    del raw["notes"]
    assert Calibration.from_json(raw).notes == ""


def _without(*path: str) -> dict[str, Any]:
    raw = _raw()
    node = raw
    for key in path[:-1]:
        node = node[key]
    del node[path[-1]]
    return raw


def _with(value: Any, *path: str) -> dict[str, Any]:
    raw = copy.deepcopy(_raw())
    node = raw
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    return raw


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        (_without("max_k"), "calibration.max_k: missing"),
        (_without("spec_step_s"), "calibration.spec_step_s: missing"),
        (_without("created"), "calibration.created: missing"),
        (
            _with(-1, "spec_step_s", "2", "4"),
            "calibration.spec_step_s['2']['4']: must be a positive number of seconds, got -1",
        ),
        (_with(0, "plain_step_s", "1"), "calibration.plain_step_s['1']: must be a positive number of seconds, got 0"),
        (
            _with(math.nan, "plain_step_s", "4"),
            "calibration.plain_step_s['4']: must be a positive number of seconds, got NaN",
        ),
        (_with(math.inf, "spec_step_s", "0", "1"), "calibration.spec_step_s['0']['1']: must be a positive"),
        (_with("0.01", "plain_step_s", "1"), "calibration.plain_step_s['1']: must be a positive number"),
        (_without("spec_step_s", "1"), "calibration.spec_step_s['1']: missing"),
        (_without("spec_step_s", "0", "4"), "calibration.spec_step_s['0']['4']: missing"),
        (_without("plain_step_s", "1"), "calibration.plain_step_s['1']: missing"),
        (_with(0.03, "plain_step_s", "8"), "calibration.plain_step_s['8']: batch size not in calibration.batch_sizes"),
        (_with({"1": 0.01, "4": 0.02}, "spec_step_s", "3"), "calibration.spec_step_s['3']: k outside 0..max_k"),
        (_with([4, 1], "batch_sizes"), "calibration.batch_sizes[1]: must be sorted"),
        (_with([0, 4], "batch_sizes"), "calibration.batch_sizes[0]: must be an integer >= 1"),
        (_with([], "batch_sizes"), "calibration.batch_sizes: must be a non-empty list"),
        (_with(0, "max_k"), "calibration.max_k: must be an integer >= 1"),
        (_with(1.5, "max_k"), "calibration.max_k: must be an integer >= 1"),
        (_with({"x": 0.01}, "plain_step_s"), "calibration.plain_step_s['x']: key must be a batch size"),
        (_with("yesterday", "created"), "calibration.created: must be an ISO 8601 time"),
        (_with("", "model"), "calibration.model: must be a non-empty string"),
    ],
)
def test_each_bad_calibration_names_the_field_and_the_fix(raw: dict[str, Any], field: str) -> None:
    with pytest.raises(CalibrationError) as err:
        Calibration.from_json(raw)
    assert str(err.value).startswith(field)
    assert "re-run `mtpjob bench-rollout --calibrate`" in str(err.value)


def test_the_source_prefixes_the_field_path() -> None:
    with pytest.raises(CalibrationError, match=r"^cal\.json\.max_k: missing"):
        Calibration.from_json(_without("max_k"), source="cal.json")
    with pytest.raises(CalibrationError, match="must be a JSON object"):
        Calibration.from_json([1, 2])  # type: ignore[arg-type]


def test_load_names_the_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.json"
    with pytest.raises(CalibrationError, match=f"^{missing}: no calibration file"):
        Calibration.load(missing)
    broken = tmp_path / "broken.json"
    broken.write_text("{")
    with pytest.raises(CalibrationError, match=f"^{broken}: not valid JSON"):
        Calibration.load(broken)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(_with(-1, "spec_step_s", "2", "4")))
    with pytest.raises(CalibrationError, match=rf"^{bad}: calibration\.spec_step_s\['2'\]\['4'\]"):
        Calibration.load(bad)


def test_constructing_directly_validates_too() -> None:
    with pytest.raises(CalibrationError, match=r"calibration\.plain_step_s\['1'\]: must be a positive"):
        make_cal({1: -0.01, 8: 0.02}, {1: {1: 1.0, 8: 1.0}})
