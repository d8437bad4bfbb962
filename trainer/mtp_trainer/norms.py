"""The trainer's RMSNorm: Megatron's torch norm, with sequence parallel allowed.

Without Transformer Engine or Apex, Megatron's only norm is ``WrappedTorchNorm``, and it refuses
``sequence_parallel`` outright. The refusal is about bookkeeping, not arithmetic: under sequence
parallel a norm between the tensor-parallel regions sees only this rank's slice of the sequence, so
its weight's gradient is a partial sum that must be summed over the tensor-parallel group. TE's norm
marks such weights ``sequence_parallel = True`` and Megatron's ``finalize_model_grads`` sums them;
this norm marks them the same way and ``train_loop.allreduce_tensor_parallel_grads`` sums them.

Every norm of the model gets the mark, also the ones that see the whole sequence (the q/k norms and
the Gated DeltaNet's output norm, which see this rank's heads instead): their gradients are partial
over heads and are summed over the same group already (``train_loop.TP_PARTIAL_GRADS``), once.

:func:`with_sequence_parallel_norms` swaps the norm in a Megatron module spec tree (layer, block and
MTP specs) for this one.
"""

from __future__ import annotations

from dataclasses import fields, is_dataclass, replace
from typing import Any

import torch
from megatron.core.transformer import TransformerConfig
from megatron.core.transformer.spec_utils import ModuleSpec
from megatron.core.transformer.torch_norm import WrappedTorchNorm


class SequenceParallelRMSNorm:
    """``torch.nn.RMSNorm`` built from Megatron's norm signature; its weight carries
    ``sequence_parallel`` (the config's flag), which the gradient finish reads."""

    def __new__(cls, config: TransformerConfig, hidden_size: int, eps: float = 1e-5, **_: Any) -> torch.nn.RMSNorm:  # type: ignore[misc]
        if config.normalization != "RMSNorm":
            raise ValueError(f"the trainer's norm is RMSNorm, not {config.normalization}")
        norm = torch.nn.RMSNorm(normalized_shape=hidden_size, eps=eps)
        norm.weight.sequence_parallel = bool(config.sequence_parallel)  # type: ignore[attr-defined]
        return norm


def with_sequence_parallel_norms(spec: Any) -> Any:
    """``spec`` with every ``WrappedTorchNorm`` replaced by :class:`SequenceParallelRMSNorm`, through
    ``ModuleSpec``s, submodule dataclasses and lists (a block's per-layer specs)."""
    if spec is WrappedTorchNorm:
        return SequenceParallelRMSNorm
    if isinstance(spec, list):
        return [with_sequence_parallel_norms(s) for s in spec]
    if isinstance(spec, ModuleSpec):
        return replace(spec, submodules=with_sequence_parallel_norms(spec.submodules))
    if is_dataclass(spec) and not isinstance(spec, type):
        changes = {f.name: with_sequence_parallel_norms(getattr(spec, f.name)) for f in fields(spec) if f.init}
        return replace(spec, **changes)
    return spec
