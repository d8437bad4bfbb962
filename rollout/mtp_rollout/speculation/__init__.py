"""Choosing and steering MTP speculative decoding from measured costs and acceptance (DESIGN.md).

Pure functions, no vLLM import: ``cost_model`` (calibrated step times x acceptance -> predicted
gain), ``schedule`` (plain engine or a per-batch-size k schedule, as vLLM's config) and
``controller`` (when a new schedule is worth switching to).
"""

from __future__ import annotations

from .controller import (
    AcceptanceWindow,
    ControllerConfig,
    ControllerState,
    Decision,
    decide,
    unconditional_from_depth_accuracy,
)
from .cost_model import (
    Calibration,
    CalibrationError,
    expected_tokens_per_step,
    predicted_gain,
    predicted_tokens_per_s,
    step_seconds,
)
from .schedule import Schedule, choose_schedule, to_vllm

__all__ = [
    "AcceptanceWindow",
    "Calibration",
    "CalibrationError",
    "ControllerConfig",
    "ControllerState",
    "Decision",
    "Schedule",
    "choose_schedule",
    "decide",
    "expected_tokens_per_step",
    "predicted_gain",
    "predicted_tokens_per_s",
    "step_seconds",
    "to_vllm",
    "unconditional_from_depth_accuracy",
]
