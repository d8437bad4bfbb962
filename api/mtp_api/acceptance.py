"""Windowed speculative-decoding figures from counter deltas.

Why deltas: cumulative totals mix the whole life of a pod (warm-up, an older policy, a different
prompt mix) into today's number. Figures here are computed over a window of increments, as
Prometheus' ``rate()`` does, and a counter that goes down is a restart: the increment is the new
value (the process started from zero), never a negative number.

Definitions (docs/metrics.md):
- acceptance rate  α = Δaccepted / Δdraft_tokens
- mean acceptance length = 1 + Δaccepted / Δdrafts (the 1 is the bonus token each verify yields)
- position i rate = Δaccepted_per_pos[i] / Δdrafts (unconditional, so length = 1 + Σ positions)
- k = Δdraft_tokens / Δdrafts (drafts per verify step)
- i.i.d. expected tokens per target forward = (1 - α^(k+1)) / (1 - α)
- speedup bound = mean acceptance length / (k·c + 1), c the draft/target cost ratio (0: the ceiling)
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field

from mtp_api import contracts as c
from mtp_api.exposition import Sample, parse

SeriesKey = tuple[str, tuple[tuple[str, str], ...]]


def counter_series(
    samples: Iterable[Sample], model_name: str | None = None
) -> tuple[dict[SeriesKey, float], list[str]]:
    """The vLLM counters we use, keyed by (name, labels); non-finite or negative values are dropped and reported."""
    out: dict[SeriesKey, float] = {}
    problems: list[str] = []
    for s in samples:
        if s.name not in c.VLLM_COUNTERS:
            continue
        if model_name is not None and s.label(c.VLLM_MODEL_LABEL) not in (None, model_name):
            continue
        if not math.isfinite(s.value) or s.value < 0:
            problems.append(f"{s.name}{dict(s.labels)} has value {s.value}: not a counter value, ignored")
            continue
        out[(s.name, s.labels)] = s.value
    return out, problems


@dataclass
class Increments:
    """Counter increments over some interval, summed over series (engines, pods)."""

    drafts: float = 0.0
    draft_tokens: float = 0.0
    accepted: float = 0.0
    per_position: dict[int, float] = field(default_factory=dict)
    generation_tokens: float = 0.0
    resets: int = 0

    def add(self, other: Increments) -> None:
        self.drafts += other.drafts
        self.draft_tokens += other.draft_tokens
        self.accepted += other.accepted
        self.generation_tokens += other.generation_tokens
        self.resets += other.resets
        for pos, v in other.per_position.items():
            self.per_position[pos] = self.per_position.get(pos, 0.0) + v


def increments(prev: dict[SeriesKey, float], cur: dict[SeriesKey, float]) -> Increments:
    """Reset-aware increments between two scrapes of one pod.

    A series present in both scrapes contributes ``cur - prev``, or ``cur`` when it went down
    (a restart). A series only in ``cur`` has no baseline and contributes nothing yet, like a
    one-sample series in ``rate()``; a series only in ``prev`` is gone and contributes nothing.
    """
    inc = Increments()
    for key, value in cur.items():
        if key not in prev:
            continue
        before = prev[key]
        if value < before:
            delta = value
            inc.resets += 1
        else:
            delta = value - before
        name, labels = key
        if name == c.VLLM_DRAFTS:
            inc.drafts += delta
        elif name == c.VLLM_DRAFT_TOKENS:
            inc.draft_tokens += delta
        elif name == c.VLLM_ACCEPTED:
            inc.accepted += delta
        elif name == c.VLLM_GENERATION_TOKENS:
            inc.generation_tokens += delta
        elif name == c.VLLM_ACCEPTED_PER_POS:
            pos_text = dict(labels).get(c.VLLM_POSITION_LABEL)
            if pos_text is not None and pos_text.isdigit():
                pos = int(pos_text)
                inc.per_position[pos] = inc.per_position.get(pos, 0.0) + delta
    return inc


def _ratio(num: float, den: float) -> float | None:
    return num / den if den > 0 else None


def expected_tokens_per_forward(alpha: float, k: float) -> float:
    """Tokens per target forward with i.i.d. acceptance α and k drafts: (1-α^(k+1))/(1-α)."""
    if alpha >= 1.0:
        return k + 1.0
    return (1.0 - alpha ** (k + 1.0)) / (1.0 - alpha)


@dataclass(frozen=True)
class WindowFigures:
    """The figures of one window; every ratio is None when its denominator did not move."""

    seconds: float
    inc: Increments
    draft_cost_ratio: float = 0.0

    @property
    def acceptance_rate(self) -> float | None:
        return _ratio(self.inc.accepted, self.inc.draft_tokens)

    @property
    def mean_acceptance_length(self) -> float | None:
        r = _ratio(self.inc.accepted, self.inc.drafts)
        return None if r is None else 1.0 + r

    @property
    def num_speculative_tokens(self) -> float | None:
        return _ratio(self.inc.draft_tokens, self.inc.drafts)

    @property
    def per_position(self) -> dict[int, float]:
        """Unconditional acceptance per draft position; a position without a series is absent."""
        if self.inc.drafts <= 0:
            return {}
        return {pos: v / self.inc.drafts for pos, v in sorted(self.inc.per_position.items())}

    def _per_second(self, value: float) -> float | None:
        return value / self.seconds if self.seconds > 0 else None

    @property
    def draft_tokens_per_second(self) -> float | None:
        return self._per_second(self.inc.draft_tokens)

    @property
    def accepted_tokens_per_second(self) -> float | None:
        return self._per_second(self.inc.accepted)

    @property
    def generation_tokens_per_second(self) -> float | None:
        return self._per_second(self.inc.generation_tokens)

    @property
    def expected_tokens_per_forward(self) -> float | None:
        alpha, k = self.acceptance_rate, self.num_speculative_tokens
        return None if alpha is None or k is None else expected_tokens_per_forward(alpha, k)

    @property
    def speedup_bound(self) -> float | None:
        length, k = self.mean_acceptance_length, self.num_speculative_tokens
        return None if length is None or k is None else length / (k * self.draft_cost_ratio + 1.0)


class IncrementWindow:
    """Time-stamped increments; ``figures(now)`` sums those inside the last ``window_s`` seconds."""

    def __init__(self, window_s: float, draft_cost_ratio: float = 0.0) -> None:
        self.window_s = window_s
        self.draft_cost_ratio = draft_cost_ratio
        self._items: deque[tuple[float, float, Increments]] = deque()

    def add(self, start: float, end: float, inc: Increments) -> None:
        """Record the increments observed between two scrapes at times ``start`` and ``end``."""
        self._items.append((start, end, inc))

    def _trim(self, now: float) -> None:
        while self._items and self._items[0][0] < now - self.window_s - 1e-9:
            self._items.popleft()

    def figures(self, now: float) -> WindowFigures:
        self._trim(now)
        total = Increments()
        if not self._items:
            return WindowFigures(0.0, total, self.draft_cost_ratio)
        for _, _, inc in self._items:
            total.add(inc)
        span = max(end for _, end, _ in self._items) - min(start for start, _, _ in self._items)
        return WindowFigures(span, total, self.draft_cost_ratio)


def figures_between(before: Iterable[str], after: Iterable[str], model_name: str | None = None) -> WindowFigures:
    """Acceptance over one interval from ``/metrics`` bodies taken at its start and its end, one pair per
    server, summed over servers (reset-aware). The window has no length (``seconds`` 0), so the
    per-second figures are undefined; ``inc.generation_tokens`` counts what was generated."""
    total = Increments()
    for b, a in zip(before, after, strict=True):
        prev, _ = counter_series(parse(b).samples, model_name)
        cur, _ = counter_series(parse(a).samples, model_name)
        total.add(increments(prev, cur))
    return WindowFigures(0.0, total)
