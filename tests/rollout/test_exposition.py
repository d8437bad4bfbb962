"""The strict exposition parser: agrees with prometheus_client on real vLLM text, never raises on garbage."""

from __future__ import annotations

import math

import pytest
from prometheus_client.parser import text_string_to_metric_families

from mtp_api.exposition import parse
from tests.rollout.conftest import FIXTURES, fixture_text


@pytest.mark.parametrize("path", sorted(FIXTURES.glob("vllm_*.txt")), ids=lambda p: p.stem)
def test_real_vllm_text_matches_prometheus_client(path):
    text = path.read_text()
    ours = parse(text)
    assert ours.errors == []
    theirs = {
        (s.name, tuple(sorted(s.labels.items())), s.value)
        for fam in text_string_to_metric_families(text)
        for s in fam.samples
        if not math.isnan(s.value)
    }
    mine = {(s.name, s.labels, s.value) for s in ours.samples if not math.isnan(s.value)}
    assert mine == theirs
    assert any(s.name == "vllm:spec_decode_num_drafts_total" for s in ours.samples)


def test_empty_scrape_is_no_samples_no_errors():
    assert parse("").samples == [] and parse("").errors == []
    assert parse("\n\n# HELP x y\n").samples == []


def test_garbage_lines_are_reported_and_skipped():
    good = fixture_text("vllm_k2_random_b")
    text = (
        "<html><body>502 Bad Gateway</body></html>\n"
        + good[: len(good) // 2]
        + '\nvllm:spec_decode_num_drafts_total{engine="0" 12\n'  # unterminated label set
        + 'bad metric name{a="b"} 1\n'
        + 'vllm:generation_tokens_total{engine="0",model_name="tiny"} twelve\n'
        + 'dup{a="1",a="2"} 3\n'
        + good[len(good) // 2 :]
    )
    result = parse(text)
    assert len(result.errors) >= 5
    assert all(e.startswith("line ") for e in result.errors)
    assert {(s.name, s.labels) for s in result.samples} >= {
        (s.name, s.labels) for s in parse(good).samples if s.name.startswith("vllm:spec_decode")
    }


def test_special_values_and_escapes():
    result = parse('m{a="x\\"y\\\\z\\n"} NaN\nn +Inf 1700000000000\no -Inf\n')
    assert result.errors == []
    m, n, o = result.samples
    assert m.label("a") == 'x"y\\z\n' and math.isnan(m.value)
    assert n.value == math.inf and o.value == -math.inf


def test_label_value_with_brace_and_comma():
    (s,) = parse('m{a="}{,",b="2"} 4').samples
    assert s.labels == (("a", "}{,"), ("b", "2")) and s.value == 4


@pytest.mark.parametrize("name", ["vllm_k2_random_a", "vllm_k3_zero_b", "vllm_k2_idle"])
def test_parse_only_wanted_names_gives_the_same_samples(name: str) -> None:
    """The scraper's filter: exactly the full parse's samples of those names, nothing else."""
    from mtp_api import contracts
    from tests.rollout.conftest import fixture_text

    text = fixture_text(name)
    wanted = frozenset((contracts.VLLM_ACCEPTED, contracts.VLLM_RUNNING))
    full = parse(text)
    few = parse(text, only=wanted)
    assert few.samples == [s for s in full.samples if s.name in wanted]
    assert few.samples and few.errors == []


def test_parse_only_still_reports_malformed_lines_of_wanted_names() -> None:
    text = 'vllm:x{a="1"} 1\nvllm:x{a= 2\n<html>junk\nvllm:y 3\nvllm:x 4 5 6\n'
    res = parse(text, only={"vllm:x"})
    assert [s.value for s in res.samples] == [1.0]
    assert [e.split(":")[0] for e in res.errors] == ["line 2", "line 5"]  # line 3 and vllm:y: not wanted
