"""Greedy output with MTP speculation equals greedy output without it (same model, same settings)."""

from __future__ import annotations

import pytest

from mtp_api.exposition import parse
from mtp_rollout.metrics import metric_names as mn
from tests.e2e.conftest import needs_vllm

pytestmark = [pytest.mark.slow, needs_vllm]

PROMPTS = [
    "The quick brown fox",
    "Speculative decoding drafts tokens",
    "Kubernetes operators reconcile",
    "Prometheus scrapes counters",
    "Multi-token prediction trains extra heads",
]


def _counter(text: str, name: str) -> float:
    return sum(s.value for s in parse(text).samples if s.name == name)


def test_greedy_speculative_equals_plain(spec_server, plain_server):
    before = spec_server.metrics_text()
    for prompt in PROMPTS:
        spec = spec_server.complete("tiny-sft", prompt, 48)
        plain = plain_server.complete("tiny-sft", prompt, 48)
        assert spec["choices"][0]["text"] == plain["choices"][0]["text"], prompt
        assert spec["usage"]["completion_tokens"] == plain["usage"]["completion_tokens"] == 48
    after = spec_server.metrics_text()
    drafts = _counter(after, mn.VLLM_DRAFTS) - _counter(before, mn.VLLM_DRAFTS)
    accepted = _counter(after, mn.VLLM_ACCEPTED) - _counter(before, mn.VLLM_ACCEPTED)
    draft_tokens = _counter(after, mn.VLLM_DRAFT_TOKENS) - _counter(before, mn.VLLM_DRAFT_TOKENS)
    # The comparison means something only if drafts were both accepted and rejected.
    assert drafts > 0 and 0 < accepted < draft_tokens
    # The plain twin really does not speculate.
    assert _counter(plain_server.metrics_text(), mn.VLLM_DRAFTS) == 0
