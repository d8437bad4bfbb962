"""Windowed rates from real vLLM counters: definitions, resets, missing positions, bad values."""

from __future__ import annotations

import math

import pytest

from mtp_api.acceptance import IncrementWindow, WindowFigures, counter_series, expected_tokens_per_forward, increments
from mtp_api.exposition import parse
from mtp_rollout.metrics import metric_names as mn
from tests.rollout.conftest import fixture_text


def series(name: str) -> dict:
    out, problems = counter_series(parse(fixture_text(name)).samples)
    assert problems == []
    return out


def value(text_name: str, metric: str, **labels: str) -> float:
    for s in parse(fixture_text(text_name)).samples:
        if s.name == metric and all(s.label(k) == v for k, v in labels.items()):
            return s.value
    raise KeyError(metric)


def test_window_figures_match_hand_computed_deltas_k2():
    a, b = "vllm_k2_random_a", "vllm_k2_random_b"
    inc = increments(series(a), series(b))
    d = {m: value(b, m) - value(a, m) for m in (mn.VLLM_DRAFTS, mn.VLLM_DRAFT_TOKENS, mn.VLLM_ACCEPTED)}
    assert d[mn.VLLM_DRAFTS] > 0
    fig = WindowFigures(10.0, inc)
    assert fig.acceptance_rate == pytest.approx(d[mn.VLLM_ACCEPTED] / d[mn.VLLM_DRAFT_TOKENS])
    assert fig.mean_acceptance_length == pytest.approx(1 + d[mn.VLLM_ACCEPTED] / d[mn.VLLM_DRAFTS])
    assert fig.num_speculative_tokens == pytest.approx(2.0)
    assert set(fig.per_position) == {0, 1}
    # Unconditional per-position rates sum to length - 1.
    assert 1 + sum(fig.per_position.values()) == pytest.approx(fig.mean_acceptance_length)
    gen = value(b, mn.VLLM_GENERATION_TOKENS) - value(a, mn.VLLM_GENERATION_TOKENS)
    assert fig.generation_tokens_per_second == pytest.approx(gen / 10.0)
    assert fig.draft_tokens_per_second == pytest.approx(d[mn.VLLM_DRAFT_TOKENS] / 10.0)


def test_zero_logit_control_accepts_everything_k3():
    fig = WindowFigures(1.0, increments(series("vllm_k3_zero_idle"), series("vllm_k3_zero_b")))
    assert fig.acceptance_rate == pytest.approx(1.0)
    assert fig.mean_acceptance_length == pytest.approx(4.0)
    assert fig.per_position == pytest.approx({0: 1.0, 1: 1.0, 2: 1.0})
    assert fig.expected_tokens_per_forward == pytest.approx(4.0)
    assert fig.speedup_bound == pytest.approx(4.0)


def test_random_head_accepts_almost_nothing():
    fig = WindowFigures(1.0, increments(series("vllm_k2_idle"), series("vllm_k2_random_b")))
    assert fig.acceptance_rate is not None and fig.acceptance_rate < 0.05


def test_counter_reset_counts_the_new_value_not_a_negative_delta():
    before, after = series("vllm_k3_zero_b"), series("vllm_k3_zero_restarted")
    inc = increments(before, after)
    assert inc.resets > 0
    drafts_after = value("vllm_k3_zero_restarted", mn.VLLM_DRAFTS)
    assert inc.drafts == drafts_after > 0
    fig = WindowFigures(1.0, inc)
    assert fig.acceptance_rate == pytest.approx(1.0)
    assert all(v >= 0 for v in fig.per_position.values())


def test_missing_position_series_is_absent_not_zero():
    text_a = "\n".join(line for line in fixture_text("vllm_k3_zero_a").splitlines() if 'position="1"' not in line)
    text_b = "\n".join(line for line in fixture_text("vllm_k3_zero_b").splitlines() if 'position="1"' not in line)
    a, _ = counter_series(parse(text_a).samples)
    b, _ = counter_series(parse(text_b).samples)
    fig = WindowFigures(1.0, increments(a, b))
    assert set(fig.per_position) == {0, 2}
    assert fig.acceptance_rate == pytest.approx(1.0)


def test_nan_and_negative_counters_are_dropped_with_a_reason():
    text = fixture_text("vllm_k3_zero_b").replace(
        'vllm:spec_decode_num_drafts_total{engine="0",model_name="tiny"}',
        'vllm:spec_decode_num_drafts_total{engine="0",model_name="tiny"} NaN\n#',
    )
    text += '\nvllm:generation_tokens_total{engine="1",model_name="tiny"} -3\n'
    out, problems = counter_series(parse(text).samples)
    assert len(problems) == 2
    assert not any(k[0] == mn.VLLM_DRAFTS for k in out)
    fig = WindowFigures(1.0, increments(series("vllm_k3_zero_a"), out))
    assert fig.mean_acceptance_length is None  # no draft counter, no length
    assert fig.acceptance_rate == pytest.approx(1.0)  # the others still work


def test_empty_scrape_gives_no_figures():
    empty, _ = counter_series(parse("").samples)
    fig = WindowFigures(5.0, increments(series("vllm_k2_random_a"), empty))
    assert fig.acceptance_rate is None and fig.mean_acceptance_length is None and fig.per_position == {}
    assert fig.generation_tokens_per_second == 0.0


def test_model_name_filter():
    out, _ = counter_series(parse(fixture_text("vllm_k2_random_b")).samples, model_name="other")
    assert out == {}


def test_expected_tokens_per_forward_formula():
    assert expected_tokens_per_forward(0.0, 3) == 1.0
    assert expected_tokens_per_forward(1.0, 3) == 4.0
    assert expected_tokens_per_forward(0.5, 2) == pytest.approx(1 + 0.5 + 0.25)
    assert math.isclose(expected_tokens_per_forward(0.999999, 1), 2.0, rel_tol=1e-5)


def test_speedup_bound_with_draft_cost():
    inc = increments(series("vllm_k3_zero_idle"), series("vllm_k3_zero_b"))
    assert WindowFigures(1.0, inc, draft_cost_ratio=0.5).speedup_bound == pytest.approx(4.0 / 2.5)


def test_increment_window_drops_old_increments_and_sums_across_pods():
    w = IncrementWindow(window_s=30)
    inc_rand = increments(series("vllm_k2_idle"), series("vllm_k2_random_b"))
    inc_zero = increments(series("vllm_k3_zero_idle"), series("vllm_k3_zero_b"))
    w.add(0, 10, inc_rand)
    w.add(40, 50, inc_zero)
    fig = w.figures(now=50)
    assert fig.acceptance_rate == pytest.approx(1.0) and fig.seconds == 10
    w.add(41, 50, inc_rand)
    both = w.figures(now=50)
    assert both.inc.drafts == inc_rand.drafts + inc_zero.drafts
    assert w.figures(now=1000).acceptance_rate is None
