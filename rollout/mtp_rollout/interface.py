"""The rollout as the operator sees it: the only module of ``mtp_rollout`` the operator may import
(``tests/test_import_graph.py`` fails on any other edge).

Two things cross the boundary, and nothing else:

1. **How to launch the server.** ``server_plan(job, model_path, ...)`` returns a ``ServerPlan``: the
   container's ``args`` (``-m mtp_rollout.runtime.serve`` followed by vLLM's own flags: model, served
   name, port, speculative config, parallelism, CPU mode, weight sync) and its ``env``. The operator
   copies them into the rollout Deployment and into the ConfigMap's ``rollout.json``; it never spells
   a vLLM flag itself, and local runs start the same plan.
2. **How to read acceptance from the rollout's ``/metrics`` bodies.** ``Collector`` scrapes the ready
   pods (``Target``; ``fetch_text`` is the default HTTP GET, replaceable for tests), keeps a window
   of reset-aware counter increments per job and returns ``WindowFigures`` (acceptance rate, mean
   acceptance length, per position, tokens/s). ``rollout_status`` turns figures into
   ``status.rollout``, ``StatusWritePolicy`` says when that is worth an API write, and
   ``AcceptanceExporter`` publishes the figures as the ``mtp_rollout_*`` gauges on the caller's
   registry. The vLLM counter names are in ``mtp_api.contracts``; the parser and the arithmetic
   (``mtp_api.exposition``, ``mtp_api.acceptance``) sit in the API package because the trainer
   reads the same counters during RL steps and may not import the rollout.
3. **How to choose k for ``numSpeculativeTokens: auto``.** The pure policy of ``mtp_rollout.speculation``
   (``Calibration`` of measured step times, ``Schedule``, the clock-free controller ``decide``): the
   operator feeds it windows and the calibration ConfigMap, keeps its state in the job's status and
   renders the chosen ``Schedule`` through ``server_plan(..., schedule=...)``.
"""

from __future__ import annotations

from mtp_api.acceptance import WindowFigures
from mtp_rollout.metrics.collector import Collector, ScrapeReport, SessionFetch, Target, fetch_text
from mtp_rollout.metrics.exporter import AcceptanceExporter
from mtp_rollout.metrics.status import StatusWritePolicy, rollout_status
from mtp_rollout.runtime.launcher import ServerPlan, server_plan
from mtp_rollout.speculation import (
    AcceptanceWindow,
    Calibration,
    CalibrationError,
    ControllerConfig,
    ControllerState,
    Decision,
    Schedule,
    decide,
    step_seconds,
    unconditional_from_depth_accuracy,
)

__all__ = [
    "AcceptanceExporter",
    "AcceptanceWindow",
    "Calibration",
    "CalibrationError",
    "Collector",
    "ControllerConfig",
    "ControllerState",
    "Decision",
    "Schedule",
    "ScrapeReport",
    "ServerPlan",
    "SessionFetch",
    "StatusWritePolicy",
    "Target",
    "WindowFigures",
    "decide",
    "fetch_text",
    "rollout_status",
    "server_plan",
    "step_seconds",
    "unconditional_from_depth_accuracy",
]
