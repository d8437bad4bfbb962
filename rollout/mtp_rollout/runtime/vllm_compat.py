"""Let vLLM 0.32 serve *dense* ``Qwen3NextForCausalLM`` checkpoints (and their MTP drafter).

Why: our CPU export flavour is Qwen3-Next with ``num_experts: 0`` (every layer a dense MLP), because
vLLM's Qwen3.5 module imports torchvision. vLLM's Qwen3-Next layers already build a dense MLP
when ``num_experts == 0``, but ``QwenNextMixtureOfExperts.set_moe_parameters`` (used by both the
target and ``Qwen3NextMTP``) raises "No Qwen3Next layer found in the model.layers." when it finds
no MoE block. That method only fills expert-parallel bookkeeping; zero MoE layers is a state
vLLM handles elsewhere (``is_mixture_of_experts`` checks ``num_moe_layers > 0``).

``apply()`` wraps that one method: with no MoE layer it records zero experts instead of raising;
with any MoE layer it calls vLLM's original. It must run in every process that builds the model:
``mtp_rollout.runtime.serve`` applies it before vLLM starts, and the engine processes inherit it
(vLLM's default ``fork`` start method on CPU). The ``vllm.general_plugins`` entry point
``mtp_rollout.runtime.vllm_compat:apply`` covers ``spawn`` as well.
"""

from __future__ import annotations

import logging
from typing import Any

log = logging.getLogger(__name__)

_APPLIED = False


def _dense_tolerant(original: Any) -> Any:
    def set_moe_parameters(self: Any) -> None:
        layers = getattr(self.model, "layers", [])
        items = layers.values() if hasattr(layers, "values") else layers
        if any(type(getattr(layer, "mlp", None)).__name__.endswith("SparseMoeBlock") for layer in items):
            original(self)
            return
        self.moe_layers = []
        self.num_moe_layers = 0
        self.num_expert_groups = 1
        self.num_shared_experts = 0
        self.num_logical_experts = 0
        self.num_physical_experts = 0
        self.num_local_physical_experts = 0
        self.num_routed_experts = 0
        self.num_redundant_experts = 0

    set_moe_parameters.__wrapped__ = original  # type: ignore[attr-defined]
    return set_moe_parameters


def apply() -> None:
    """Idempotently patch vLLM's Qwen3-Next MoE bookkeeping to accept dense models."""
    global _APPLIED
    if _APPLIED:
        return
    from vllm.model_executor.models import qwen3_next

    cls = qwen3_next.QwenNextMixtureOfExperts
    if not hasattr(cls.set_moe_parameters, "__wrapped__"):
        cls.set_moe_parameters = _dense_tolerant(cls.set_moe_parameters)  # type: ignore[method-assign]
    _APPLIED = True
    log.debug("dense Qwen3-Next support applied to vLLM")
