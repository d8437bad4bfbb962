"""Mixture-of-experts bookkeeping around Megatron's own MoE layer (the model is built by
``model_provider.ModelProvider.moe_config``; this module only observes and scales).

- The router's Switch load-balancing loss is attached by Megatron itself
  (``MoEAuxLossAutoScaler``: the forward returns the routing probabilities unchanged, the backward
  adds ``moe_aux_loss_coeff * d aux / d probs`` times ``main_loss_backward_scale``). A hand-written
  loop has to set that scale to what it scales the main loss by: :func:`set_aux_loss_scale`.
- The unscaled loss per MoE layer is what Megatron's router writes into its logging tracker
  (``moe_utils.get_moe_layer_wise_logging_tracker()["load_balancing_loss"]``, summed over
  micro-batches); :func:`take_aux_loss` reads and clears it.
- The expert load (tokens routed to each expert, per MoE layer, trunk layers then MTP layers) comes
  from forward hooks on every ``TopKRouter``: :class:`ExpertLoad`. A token counts once for each of
  its top-k experts, so a layer's counts sum to k x tokens.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from megatron.core import parallel_state as ps
from megatron.core.transformer.moe import moe_utils
from megatron.core.transformer.moe.moe_utils import MoEAuxLossAutoScaler
from megatron.core.transformer.moe.router import TopKRouter
from torch import nn

from mtp_trainer import pipeline

AUX_LOSS_NAME = "load_balancing_loss"  # Megatron's tracker key for the "aux_loss" balancing type


def routers(model: nn.Module) -> list[tuple[str, TopKRouter]]:
    """Every router, in module order: decoder layers, then the MTP layers."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, TopKRouter)]


def set_aux_loss_scale(scale: float, device: torch.device | str = "cpu") -> None:
    """The factor the aux-loss gradient is multiplied by (Megatron: loss scale / micro-batches)."""
    MoEAuxLossAutoScaler.set_loss_scale(torch.tensor(scale, dtype=torch.float32, device=device))


def reset_tracker() -> None:
    """Forget Megatron's aux-loss logging tracker: a module-level dict whose per-layer vector is sized by
    the first MoE model that logged into it, so a later model with more layers (another test, another
    job in the same process) would index past its end."""
    moe_utils.get_moe_layer_wise_logging_tracker().clear()


def take_aux_loss(micro_batches: int) -> float | None:
    """Mean unscaled load-balancing loss per MoE layer that ran (the loss is positive, so a zero entry
    is a layer that did not: the MTP layer in ``disabled`` mode) and micro-batch since the last call;
    None when nothing was logged (no MoE, coefficient 0, or evaluation). Clears the tracker."""
    tracker = moe_utils.get_moe_layer_wise_logging_tracker()
    entry = tracker.get(AUX_LOSS_NAME)
    if entry is None:
        return None
    values = entry["values"]
    # With pipeline parallel each stage logged its own layers: the sums span the stages.
    total, ran = pipeline.sum_over_stages([float(values.sum()), float((values != 0).sum())])
    values.zero_()
    return total / (ran * max(micro_batches, 1)) if ran else None


class ExpertLoad:
    """Tokens per expert per MoE layer, counted in training forwards (grad enabled, ``model.train()``)."""

    def __init__(self, model: nn.Module) -> None:
        self.names: list[str] = []
        self.counts: list[torch.Tensor] = []
        self._handles: list[Any] = []
        for i, (name, router) in enumerate(routers(model)):
            self.names.append(name.removesuffix(".mlp.router"))
            self.counts.append(torch.zeros(router.config.num_moe_experts, dtype=torch.float64))
            self._handles.append(router.register_forward_hook(self._hook(i)))

    def _hook(self, i: int) -> Any:
        def hook(module: nn.Module, args: Any, output: Any) -> None:
            if module.training and torch.is_grad_enabled():
                routing_map = output[1]  # [tokens, experts] bool
                self.counts[i] += routing_map.sum(dim=0).detach().to("cpu", torch.float64)

        return hook

    def __len__(self) -> int:
        return len(self.counts)

    def take(self, group: Any = None, device: torch.device | str = "cpu") -> list[list[int]]:
        """Counts since the last call, summed over ``group`` (the data-parallel ranks), every MoE layer
        of the model in order (with pipeline parallel the stages' rows are joined); resets them."""
        if not self.counts:
            return []
        vec = torch.stack(self.counts)
        if dist.is_initialized() and dist.get_world_size(group) > 1:
            vec = vec.to(device)
            dist.all_reduce(vec, group=group)
        for c in self.counts:
            c.zero_()
        rows = [[int(x) for x in row] for row in vec.tolist()]
        if pipeline.size() == 1:
            return rows
        stages: list[list[list[int]] | None] = [None] * pipeline.size()
        dist.all_gather_object(stages, rows, group=ps.get_pipeline_model_parallel_group())
        return [row for part in stages for row in part or []]

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()
