"""Training metrics: Prometheus gauges on a port and one JSON line per step in ``metrics.jsonl``.

Prometheus names are prefixed ``mtp_trainer_`` and carry ``job`` / ``namespace`` labels (empty
when unknown); per-depth series add ``depth`` ("1".."D"). Validation series use ``split``.
The JSONL file is what ``mtpjob run`` tails for live progress:
``{"step", "lm_loss", "mtp_loss": [...], "mtp_agreement": [...], "tokens_per_s", "step_s", ...}``
for training steps and the same keys plus ``"split": "validation"`` for evaluations.
Only rank 0 reports.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Gauge, start_http_server

from mtp_api import contracts
from mtp_trainer.config import MetricsConfig


@dataclass
class StepRecord:
    step: int
    lm_loss: float
    mtp_loss: list[float]
    mtp_agreement: list[float]
    lm_agreement: float
    tokens_per_s: float
    step_s: float
    learning_rate: float
    grad_norm: list[float] = field(default_factory=list)
    split: str = "train"
    # Mixture of experts (training steps): the router's mean unscaled load-balancing loss per MoE layer
    # (None when its coefficient is 0), and tokens routed to each expert, per MoE layer (trunk, then MTP).
    moe_aux_loss: float | None = None
    expert_load: list[list[int]] | None = None

    def to_json(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "step": self.step,
            "lm_loss": self.lm_loss,
            "mtp_loss": self.mtp_loss,
            "mtp_agreement": self.mtp_agreement,
            "lm_agreement": self.lm_agreement,
            "tokens_per_s": self.tokens_per_s,
            "step_s": self.step_s,
        }
        if self.split == "train":
            d["learning_rate"] = self.learning_rate
            d["grad_norm"] = self.grad_norm
            if self.moe_aux_loss is not None:
                d["moe_aux_loss"] = self.moe_aux_loss
            if self.expert_load is not None:
                d["expert_load"] = self.expert_load
        else:
            d["split"] = self.split
        return d


class Metrics:
    """Rank-0 reporter; on other ranks every method is a no-op."""

    def __init__(self, cfg: MetricsConfig, out_dir: Path, enabled: bool = True) -> None:
        self.enabled = enabled
        # "warmup" while an rlvr job runs its SFT warm-up: records are tagged with it and the step
        # gauge is left alone, so warm-up steps never count towards the job's maxSteps.
        self.phase: str | None = None
        self.path = out_dir / contracts.METRICS_FILE
        self.port: int | None = None
        self.registry = CollectorRegistry()
        labels = ["job", "namespace"]
        self._base = {"job": cfg.job, "namespace": cfg.namespace}
        r = self.registry
        self.step = Gauge(contracts.TRAINER_STEP, "Last completed optimizer step", labels, registry=r)
        self.lm_loss = Gauge(contracts.TRAINER_LM_LOSS, "Next-token cross-entropy", [*labels, "split"], registry=r)
        self.mtp_loss = Gauge(
            contracts.TRAINER_MTP_LOSS, "MTP cross-entropy per depth", [*labels, "split", "depth"], registry=r
        )
        self.mtp_agreement = Gauge(
            contracts.TRAINER_MTP_AGREEMENT,
            "Top-1 agreement of the MTP head with the actual token at depth+1 (offline acceptance proxy)",
            [*labels, "split", "depth"],
            registry=r,
        )
        self.tokens_per_s = Gauge(contracts.TRAINER_TOKENS_PER_SECOND, "Training tokens per second", labels, registry=r)
        self.step_s = Gauge(contracts.TRAINER_STEP_SECONDS, "Wall time of the last optimizer step", labels, registry=r)
        self.lr = Gauge(contracts.TRAINER_LEARNING_RATE, "Current learning rate", labels, registry=r)
        self.moe_aux_loss = Gauge(
            contracts.TRAINER_MOE_AUX_LOSS,
            "MoE router load-balancing loss, mean per MoE layer (1.0 = balanced)",
            labels,
            registry=r,
        )
        self.moe_expert_load = Gauge(
            contracts.TRAINER_MOE_EXPERT_LOAD,
            "Share of the routed tokens each expert got in the last step, per MoE layer (1/experts = balanced)",
            [*labels, "layer", "expert"],
            registry=r,
        )
        if enabled:
            out_dir.mkdir(parents=True, exist_ok=True)
            if cfg.port:
                server, _ = start_http_server(cfg.port, registry=self.registry)
                self.port = int(server.server_port)

    def set_step(self, step: int) -> None:
        """Report the last completed step without a record (after a resume, and after the export)."""
        if self.enabled:
            self.step.labels(**self._base).set(step)

    def set_mtp(self, split: str, losses: list[float], agreements: list[float]) -> None:
        """Per-depth MTP loss and top-1 agreement gauges (depth 1 = the token after next)."""
        if not self.enabled:
            return
        for d, (loss, agree) in enumerate(zip(losses, agreements, strict=True), start=1):
            self.mtp_loss.labels(**self._base, split=split, depth=str(d)).set(loss)
            self.mtp_agreement.labels(**self._base, split=split, depth=str(d)).set(agree)

    def record(self, rec: StepRecord) -> None:
        if not self.enabled:
            return
        b = self._base
        split = rec.split
        self.lm_loss.labels(**b, split=split).set(rec.lm_loss)
        self.set_mtp(split, rec.mtp_loss, rec.mtp_agreement)
        if split == "train" and self.phase is None:
            self.step.labels(**b).set(rec.step)
            self.tokens_per_s.labels(**b).set(rec.tokens_per_s)
            self.step_s.labels(**b).set(rec.step_s)
            self.lr.labels(**b).set(rec.learning_rate)
            if rec.moe_aux_loss is not None:
                self.moe_aux_loss.labels(**b).set(rec.moe_aux_loss)
            for layer, counts in enumerate(rec.expert_load or []):
                total = max(sum(counts), 1)
                for e, n in enumerate(counts):
                    self.moe_expert_load.labels(**b, layer=str(layer), expert=str(e)).set(n / total)
        line = rec.to_json() if self.phase is None else {"phase": self.phase, **rec.to_json()}
        with self.path.open("a") as fh:
            fh.write(json.dumps(line) + "\n")
