"""The speed comparison of `mtpjob run`: interleaved rounds and the median of their ratios.

The servers here are scripted stand-ins for vLLM's HTTP surface (completions and /metrics) that
record the order of calls; the figures expected below are worked out by hand from the scripted
token counts and clock.
"""

from __future__ import annotations

from typing import Any

import pytest

from mtpjob.local import bench
from mtpjob.local.bench import DecodeRun, PairedSpeed, paired_passes


class _ScriptedServer:
    """Answers every completion with ``tokens`` tokens and advances a shared fake clock by ``seconds``."""

    def __init__(self, name: str, tokens: int, seconds: list[float], clock: list[float], calls: list[str]) -> None:
        self.name, self.tokens, self.seconds, self.clock, self.calls = name, tokens, seconds, clock, calls

    def complete(self, model: str, prompt: str, max_tokens: int, **_: Any) -> dict[str, Any]:
        if max_tokens == 8:  # the warm-up request: not timed
            return {"usage": {"completion_tokens": 8}, "choices": [{"text": "warm"}]}
        self.calls.append(self.name)
        self.clock[0] += self.seconds.pop(0)
        return {"usage": {"completion_tokens": self.tokens}, "choices": [{"text": f"answer to {prompt}"}]}

    def metrics_text(self) -> str:
        return ""


def test_rounds_alternate_and_speedup_compares_the_fastest_passes(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = [0.0]
    monkeypatch.setattr(bench.time, "perf_counter", lambda: clock[0])
    calls: list[str] = []
    # 2 prompts per pass, 10 tokens per answer -> 20 tokens per pass.
    # spec passes take 1.0, 2.0, 0.8 s; plain passes 2.0, 2.0, 4.0 s (per prompt: half of it).
    spec = _ScriptedServer("spec", 10, [0.5, 0.5, 1.0, 1.0, 0.4, 0.4], clock, calls)
    plain = _ScriptedServer("plain", 10, [1.0, 1.0, 1.0, 1.0, 2.0, 2.0], clock, calls)
    speed = paired_passes(spec, plain, "m", ["a", "b"], 64, k=2, rounds=3)  # type: ignore[arg-type]

    assert calls == [
        "spec",
        "spec",
        "plain",
        "plain",
        "plain",
        "plain",
        "spec",
        "spec",
        "spec",
        "spec",
        "plain",
        "plain",
    ]
    # tokens/s: spec 20, 10, 25; plain 10, 10, 5 -> ratios 2.0, 1.0, 5.0 (median 2.0);
    # fastest passes: spec 25, plain 10 -> 2.5
    assert speed.ratios == pytest.approx([2.0, 1.0, 5.0])
    assert speed.median_ratio == pytest.approx(2.0)
    assert speed.spec_tokens_per_second == pytest.approx(25.0)
    assert speed.plain_tokens_per_second == pytest.approx(10.0)
    assert speed.speedup == pytest.approx(2.5)
    assert speed.outputs_equal
    assert speed.to_json()["speedup_rounds"] == pytest.approx([2.0, 1.0, 5.0])


def test_one_differing_round_makes_outputs_unequal() -> None:
    same = DecodeRun("x", 2, 1.0, 10, ["a"])
    other = DecodeRun("x", 0, 1.0, 10, ["b"])
    assert not PairedSpeed([same, same], [same, other]).outputs_equal


def test_zero_rounds_is_refused() -> None:
    with pytest.raises(ValueError, match="rounds must be >= 1"):
        paired_passes(None, None, "m", ["a"], 8, k=1, rounds=0)  # type: ignore[arg-type]
