"""The closed loop: acceptance windows in, "keep" or "switch to this schedule" out.

Pure and clock-free (the caller passes ``now_s``) so every decision can be replayed in a test.
Switching costs something (an engine restart or reconfiguration at a safe point), and acceptance
is noisy, so four brakes stand between a measurement and a switch:

- evidence: a rollout window with fewer than ``min_drafts`` drafts says nothing; while the engine
  is plain it drafts nothing, so the trainer's MTP accuracy on policy samples is the only evidence
  (and it is ignored while the engine drafts: the rollout then measures acceptance directly);
- smoothing: per-position EWMA across windows (``ewma_alpha``);
- hysteresis: the candidate must beat the running schedule's predicted gain, both computed with
  the same smoothed acceptance, by ``hysteresis`` (relative);
- dwell and safe points: no change within ``min_dwell_s`` of the last one, and only at a safe point.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from .cost_model import Calibration, sanitize
from .schedule import Schedule, choose_schedule, evaluate, nearest, owned_sizes


@dataclass(frozen=True)
class ControllerConfig:
    min_dwell_s: float = 300.0
    hysteresis: float = 0.05
    min_drafts: int = 200
    ewma_alpha: float = 0.5
    margin: float = 0.03

    def __post_init__(self) -> None:
        if not 0 < self.ewma_alpha <= 1:
            raise ValueError(f"ewma_alpha must be in (0, 1], got {self.ewma_alpha}")
        if self.min_dwell_s < 0 or self.hysteresis < 0 or self.min_drafts < 0 or self.margin < 0:
            raise ValueError("min_dwell_s, hysteresis, min_drafts and margin must be >= 0")


@dataclass(frozen=True)
class AcceptanceWindow:
    """One window of evidence; ``per_position`` is unconditional (see ``unconditional_from_depth_accuracy``).

    ``source="trainer"``: the MTP head's accuracy measured by the trainer on policy samples, the only
    evidence while the engine is plain. ``batch_size``: mean running requests, None if unknown.
    """

    per_position: tuple[float, ...]
    drafts: float
    source: Literal["rollout", "trainer"]
    batch_size: float | None = None


@dataclass(frozen=True)
class ControllerState:
    schedule: Schedule | None = None
    since_s: float | None = None
    smoothed: tuple[float, ...] | None = None


@dataclass(frozen=True)
class Decision:
    """``schedule`` is what runs from now: the new one when ``apply``, else the running one (before any
    schedule was applied: the one proposed for the first safe point). ``state`` is the next state."""

    apply: bool
    schedule: Schedule
    reason: str
    predicted_gain_current: float
    predicted_gain_new: float
    state: ControllerState


def unconditional_from_depth_accuracy(accuracy: Sequence[float]) -> tuple[float, ...]:
    """Per-depth top-1 accuracy (each depth scored on the true prefix) -> unconditional acceptance.

    vLLM accepts position i only if 0..i-1 were accepted, so position i's unconditional rate is the
    product of the depth accuracies up to it (assuming independence between depths).
    """
    out: list[float] = []
    p = 1.0
    for x in accuracy:
        a = float(x)
        p *= 0.0 if math.isnan(a) else min(max(a, 0.0), 1.0)
        out.append(p)
    return tuple(out)


def _ignored(state: ControllerState, window: AcceptanceWindow, config: ControllerConfig) -> str | None:
    """Why the window carries no acceptance evidence, or None when it does."""
    engine = state.schedule.engine if state.schedule else None
    if not window.per_position:
        return "the window has no acceptance"
    if window.source == "trainer":
        return "trainer accuracy is not used while the engine drafts" if engine == "speculative" else None
    if engine == "plain":
        return "a plain engine drafts nothing"
    if not window.drafts >= config.min_drafts:
        return f"{window.drafts:g} drafts < min_drafts {config.min_drafts}"
    return None


def _smooth(old: tuple[float, ...] | None, new: tuple[float, ...], alpha: float) -> tuple[float, ...]:
    """Per-position EWMA; positions the window lacks keep their old value, new positions start at theirs."""
    old = old or ()
    n = max(len(old), len(new))
    out = []
    for i in range(n):
        if i >= len(new):
            out.append(old[i])
        elif i >= len(old):
            out.append(new[i])
        else:
            out.append(alpha * new[i] + (1 - alpha) * old[i])
    return tuple(out)


def decide(
    state: ControllerState,
    window: AcceptanceWindow,
    cal: Calibration,
    *,
    now_s: float,
    at_safe_point: bool,
    max_k: int,
    max_batch: int,
    config: ControllerConfig = ControllerConfig(),  # frozen, so a shared default is safe
) -> Decision:
    """Fold the window into the smoothed acceptance, pick the best schedule, and say whether to switch.

    A running schedule whose start is unknown (``since_s`` None) counts as past its dwell.
    """
    why_ignored = _ignored(state, window, config)
    smoothed = state.smoothed
    if why_ignored is None:
        smoothed = _smooth(state.smoothed, sanitize(window.per_position), config.ewma_alpha)
    accept = smoothed or ()
    b = window.batch_size
    if b is not None and math.isfinite(b) and b > 0:
        at = nearest(owned_sizes(cal, max_batch), b)
        weights: dict[int, float] | None = {at: 1.0}
        where = f"at batch {at}"
    else:
        weights, where = None, "over the calibrated batch sizes"
    new = choose_schedule(cal, accept, max_k=max_k, max_batch=max_batch, batch_weights=weights, margin=config.margin)
    current = state.schedule
    cur = evaluate(cal, accept, current, max_batch=max_batch, batch_weights=weights) if current else None
    g_cur = cur.weighted_gain if cur else 1.0
    g_new = new.weighted_gain

    shown = ", ".join(f"{a:.2f}" for a in sanitize(accept)) or "none yet"
    head = f"window ignored ({why_ignored}); " if why_ignored else ""
    head += f"acceptance by position [{shown}]"
    if cur is None or new.same_plan(cur):
        compare = f"{new.describe()} predicted {g_new:.2f}x {where}"
    else:
        compare = f"{cur.describe()} predicted {g_cur:.2f}x vs {new.describe()} {g_new:.2f}x {where}"

    apply = False
    if current is None:
        apply = at_safe_point
        action = "applying it as the first schedule" if apply else "first schedule waits for a safe point"
    elif new.same_plan(current):
        action = "keeping it"
    elif not g_new > g_cur * (1 + config.hysteresis):
        action = f"keeping {current.describe()}: the gain is within the {config.hysteresis:.0%} hysteresis"
    elif state.since_s is not None and now_s - state.since_s < config.min_dwell_s:
        waited = now_s - state.since_s
        action = f"keeping {current.describe()}: {waited:g} s of the {config.min_dwell_s:g} s dwell have passed"
    elif not at_safe_point:
        action = f"keeping {current.describe()} until the next safe point"
    else:
        apply = True
        action = f"switching to {new.describe()}"

    if apply:
        chosen, next_state = new, ControllerState(new, now_s, smoothed)
    else:
        chosen = current if current is not None else new
        next_state = ControllerState(current, state.since_s, smoothed)
    return Decision(apply, chosen, f"{head}: {compare}; {action}", g_cur, g_new, next_state)
