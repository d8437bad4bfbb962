"""Which engine to run and how many drafts per batch size: the best schedule under the cost model.

Two engines exist because k=0 inside a speculative engine is not free (the drafter's first forward
still runs: 0.75x of plain on the CPU machine). So "speculate nowhere" is the *plain* engine, and
the speculative engine is chosen only when it clearly pays: its weighted gain beats plain by
``margin`` and no batch size that carries weight loses more than ``margin``.

Inside the speculative engine, vLLM's ``num_speculative_tokens_per_batch_size`` (inclusive
``(start, end, k)`` ranges, the first starting at 1) lets k follow the batch size: each calibrated
batch size gets the k of highest predicted gain and owns the batch sizes from itself up to just
below the next calibrated size.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal, cast

from .cost_model import Calibration, predicted_gain

Engine = Literal["plain", "speculative"]
_TIE = 1e-12  # relative: a k must beat a smaller k by more than float noise (ties -> smaller k)


@dataclass(frozen=True)
class Schedule:
    """An engine choice; for ``speculative``, vLLM's inclusive ``(start, end, k)`` ranges.

    ``max_k`` is the largest k the choice could use (the caller's cap and the calibration's, the
    smaller); ``predicted_gain`` is per calibrated batch size in use, vs plain; ``weighted_gain``
    is its weighted mean under the weights the choice was made with.
    """

    engine: Engine
    max_k: int
    ranges: tuple[tuple[int, int, int], ...]
    predicted_gain: dict[int, float]
    weighted_gain: float

    def __post_init__(self) -> None:
        if self.engine not in ("plain", "speculative"):
            raise ValueError(f"schedule.engine must be 'plain' or 'speculative', got {self.engine!r}")
        if self.engine == "plain":
            if self.ranges:
                raise ValueError("schedule.ranges must be empty for the plain engine")
            return
        if not self.ranges or self.ranges[0][0] != 1:
            raise ValueError("schedule.ranges must be non-empty and start at batch size 1")
        prev_end = 0
        for i, (s, e, k) in enumerate(self.ranges):
            if s <= prev_end or e < s or k < 0:
                raise ValueError(
                    f"schedule.ranges[{i}] = {(s, e, k)}: ranges must be sorted, disjoint, start <= end, k >= 0"
                )
            prev_end = e

    def k_at(self, batch: int) -> int | None:
        """k run at this batch size (None: plain); past the last range vLLM carries the last k forward."""
        if self.engine == "plain":
            return None
        k = self.ranges[0][2]
        for s, _, rk in self.ranges:
            if s > batch:
                break
            k = rk
        return k

    def same_plan(self, other: Schedule) -> bool:
        """Same engine and ranges (what the engine runs); the predicted gains may differ."""
        return self.engine == other.engine and self.ranges == other.ranges

    def describe(self) -> str:
        if self.engine == "plain":
            return "plain decoding"
        parts = [f"k={k} for {s}" if s == e else f"k={k} for {s}-{e}" for s, e, k in self.ranges]
        return "speculative: " + ", ".join(parts)

    def to_json(self) -> dict[str, Any]:
        return {
            "engine": self.engine,
            "max_k": self.max_k,
            "ranges": [list(r) for r in self.ranges],
            "predicted_gain": {str(b): g for b, g in sorted(self.predicted_gain.items())},
            "weighted_gain": self.weighted_gain,
        }

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> Schedule:
        try:
            return cls(
                engine=cast(Engine, d["engine"]),
                max_k=int(d["max_k"]),
                ranges=tuple((int(s), int(e), int(k)) for s, e, k in d["ranges"]),
                predicted_gain={int(b): float(g) for b, g in d["predicted_gain"].items()},
                weighted_gain=float(d["weighted_gain"]),
            )
        except KeyError as e:
            raise ValueError(f"schedule.{e.args[0]}: missing") from None
        except (TypeError, AttributeError) as e:
            raise ValueError(f"schedule: malformed ({e})") from None


def owned_sizes(cal: Calibration, max_batch: int) -> tuple[int, ...]:
    """Calibrated batch sizes that own at least one batch size in 1..max_batch (the first always does)."""
    if max_batch < 1:
        raise ValueError(f"max_batch must be >= 1, got {max_batch}")
    return tuple(b for i, b in enumerate(cal.batch_sizes) if i == 0 or b <= max_batch)


def nearest(sizes: Sequence[int], b: float) -> int:
    """The size closest to b (ties -> the smaller one)."""
    return min(sizes, key=lambda s: (abs(s - b), s))


def _weights(sizes: tuple[int, ...], batch_weights: Mapping[int, float] | None) -> dict[int, float]:
    """Weights per owned calibrated size; an uncalibrated size's weight goes to the nearest one."""
    if batch_weights is None:
        return dict.fromkeys(sizes, 1.0)
    out = dict.fromkeys(sizes, 0.0)
    for b, w in batch_weights.items():
        if not (math.isfinite(w) and w >= 0):
            raise ValueError(f"batch_weights[{b}] must be a finite number >= 0, got {w}")
        out[nearest(sizes, b)] += w
    if sum(out.values()) <= 0:
        raise ValueError("batch_weights: at least one weight must be > 0")
    return out


def evaluate(
    cal: Calibration,
    per_position: Sequence[object],
    schedule: Schedule,
    *,
    max_batch: int,
    batch_weights: Mapping[int, float] | None = None,
) -> Schedule:
    """``schedule`` with its gains recomputed under this acceptance and these weights.

    The controller compares the running schedule and a candidate with the *same* acceptance, so the
    comparison measures the schedules, not the change in acceptance. k above the calibration's max_k
    is clipped to it, as vLLM clips k above ``num_speculative_tokens``.
    """
    sizes = owned_sizes(cal, max_batch)
    weights = _weights(sizes, batch_weights)
    gains = {}
    for b in sizes:
        k = schedule.k_at(b)
        gains[b] = predicted_gain(cal, per_position, None if k is None else min(k, cal.max_k), b)
    weighted = sum(weights[b] * gains[b] for b in sizes) / sum(weights.values())
    return replace(schedule, predicted_gain=gains, weighted_gain=weighted)


def _ranges(sizes: tuple[int, ...], ks: Mapping[int, int], max_batch: int) -> tuple[tuple[int, int, int], ...]:
    """Each size owns itself .. next size - 1 (the first from 1, the last to max_batch); equal k merged."""
    out: list[tuple[int, int, int]] = []
    for i, b in enumerate(sizes):
        start = 1 if i == 0 else b
        end = sizes[i + 1] - 1 if i + 1 < len(sizes) else max_batch
        if out and out[-1][2] == ks[b]:
            out[-1] = (out[-1][0], end, ks[b])
        else:
            out.append((start, end, ks[b]))
    return tuple(out)


def choose_schedule(
    cal: Calibration,
    per_position: Sequence[object],
    *,
    max_k: int,
    max_batch: int,
    batch_weights: Mapping[int, float] | None = None,
    margin: float = 0.03,
) -> Schedule:
    """The best schedule for 1..max_batch under this acceptance (see the module docstring).

    ``batch_weights`` (default uniform) say how much each batch size matters, e.g. 1.0 at the batch
    size the rollout runs at; sizes not calibrated count for the nearest calibrated size.
    """
    cap = max(0, min(max_k, cal.max_k))
    sizes = owned_sizes(cal, max_batch)
    weights = _weights(sizes, batch_weights)
    best: dict[int, int] = {}
    for b in sizes:
        best_k, best_g = 0, predicted_gain(cal, per_position, 0, b)
        for k in range(1, cap + 1):
            g = predicted_gain(cal, per_position, k, b)
            if g > best_g * (1 + _TIE):
                best_k, best_g = k, g
        best[b] = best_k
    spec = Schedule("speculative", cap, _ranges(sizes, best, max_batch), {}, 0.0)
    spec = evaluate(cal, per_position, spec, max_batch=max_batch, batch_weights=weights)
    worst = min(g for b, g in spec.predicted_gain.items() if weights[b] > 0)
    if cap >= 1 and spec.weighted_gain > 1 + margin and worst >= 1 - margin:
        return spec
    return Schedule("plain", cap, (), dict.fromkeys(sizes, 1.0), 1.0)


def to_vllm(schedule: Schedule) -> dict[str, Any] | None:
    """vLLM's ``speculative_config`` for this schedule; None for the plain engine (no config at all).

    One k everywhere (k >= 1) is the plain fixed-k config; otherwise the per-batch-size ranges, with
    ``num_speculative_tokens`` the largest k (at least 1: vLLM requires a positive value).
    """
    if schedule.engine == "plain":
        return None
    ks = {k for _, _, k in schedule.ranges}
    top = max(max(ks), 1)
    config: dict[str, Any] = {"method": "mtp", "num_speculative_tokens": top}
    if ks != {top}:
        config["num_speculative_tokens_per_batch_size"] = [list(r) for r in schedule.ranges]
    return config
