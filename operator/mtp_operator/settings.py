"""The operator's settings: one typed, frozen object, read once at startup from ``MTP_OPERATOR_*`` env.

The chart sets these env vars from ``values.yaml``; nothing else in the operator reads the
environment, so what the operator does is visible in one place.
"""

from __future__ import annotations

import os
import random
from collections.abc import Mapping

from pydantic import BaseModel, ConfigDict, Field

PREFIX = "MTP_OPERATOR_"


class OperatorConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    namespaces: tuple[str, ...] = Field(default=(), description="Namespaces to watch; empty means cluster-wide.")
    peering_name: str = Field(default="mtp-operator", min_length=1)
    peering_priority: int = Field(
        default_factory=lambda: random.randint(1, 2**31 - 1),
        description="Kopf peering priority; a distinct random value per process, so of two replicas exactly "
        "one acts (equal priorities make both pause, which is also safe).",
    )
    standalone: bool = Field(default=False, description="Skip peering (tests, single local runs).")
    metrics_port: int = Field(default=8080, ge=0, le=65535, description="Prometheus /metrics; 0 disables.")
    health_port: int = Field(default=8081, ge=0, le=65535, description="Kopf liveness /healthz; 0 disables.")
    resync_seconds: float = Field(default=60.0, gt=0, description="Level-based resync of every job.")
    scrape_seconds: float = Field(
        default=15.0, ge=0, description="How often each job's rollout and trainer pods are scraped; 0 disables."
    )
    scrape_timeout_seconds: float = Field(default=2.0, gt=0, description="Bound on one pod's /metrics answer.")
    acceptance_window_seconds: float = Field(
        default=120.0, gt=0, description="Window of the acceptance rates (deltas of vLLM's counters)."
    )
    status_min_interval_seconds: float = Field(
        default=60.0, ge=0, description="Acceptance in status changes at most this often (no status churn)."
    )
    log_level: str = Field(default="INFO")

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> OperatorConfig:
        env = os.environ if env is None else env
        raw: dict[str, object] = {}
        for name, field in cls.model_fields.items():
            value = env.get(PREFIX + name.upper())
            if value is None:
                continue
            if field.annotation == tuple[str, ...]:
                raw[name] = tuple(v.strip() for v in value.split(",") if v.strip())
            else:
                raw[name] = value
        return cls.model_validate(raw)
