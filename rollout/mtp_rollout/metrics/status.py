"""The acceptance summary that goes into ``MTPTrainingJob.status.rollout``, and when to write it.

Why rounding plus a rate limit: every status write is an API-server write, a new
resourceVersion, and a watch event for every controller and ``kubectl get -w``. Windowed figures
move on every scrape; users read two decimals. So figures are rounded (acceptance and lengths to
two decimals, tokens/s to two significant digits) and written only when the rounded values
changed *and* ``min_interval_s`` has passed since the last write; a change of ready replicas or
the first figures are written at once.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from mtp_api.acceptance import WindowFigures
from mtp_api.types import RolloutStatus


def _round_sig(x: float, digits: int = 2) -> float:
    if x == 0 or not math.isfinite(x):
        return 0.0
    return round(x, digits - 1 - math.floor(math.log10(abs(x))))


def _contiguous_positions(per_position: dict[int, float]) -> list[float] | None:
    """Positions 0, 1, ... up to the first missing one (a list cannot say "unknown" in between)."""
    out = []
    for pos in range(len(per_position)):
        if pos not in per_position:
            break
        out.append(round(min(max(per_position[pos], 0.0), 1.0), 2))
    return out or None


def rollout_status(fig: WindowFigures, ready_replicas: int) -> RolloutStatus:
    """The rounded status fields for one window; undefined figures stay unset (None)."""
    rate = fig.acceptance_rate
    length = fig.mean_acceptance_length
    tps = fig.generation_tokens_per_second if fig.seconds > 0 else None
    return RolloutStatus(
        ready_replicas=ready_replicas,
        acceptance_rate=None if rate is None else round(min(max(rate, 0.0), 1.0), 2),
        mean_acceptance_length=None if length is None else round(max(length, 0.0), 2),
        per_position_acceptance=_contiguous_positions(fig.per_position),
        tokens_per_second=None if tps is None else _round_sig(max(tps, 0.0)),
    )


@dataclass(frozen=True)
class StatusWritePolicy:
    """When a new rollout status is worth a write."""

    min_interval_s: float = 60.0

    def should_write(
        self, last: RolloutStatus | None, last_written_at: float | None, new: RolloutStatus, now: float
    ) -> bool:
        if last is None or last_written_at is None:
            return True
        if new == last:
            return False
        if new.ready_replicas != last.ready_replicas:
            return True
        if last.acceptance_rate is None and new.acceptance_rate is not None:
            return True
        return now - last_written_at >= self.min_interval_s
