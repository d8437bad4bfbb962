"""The optimizer: AdamW, and with ``strategy.distributedOptimizer`` its state sharded over the
data-parallel ranks.

Why sharded: AdamW keeps two float32 moments per parameter, four times the memory of bfloat16
weights; every data-parallel rank holding all of it is what Megatron's distributed optimizer removes. Megatron's implementation needs its CUDA DDP buffers, which this
trainer's plain loop (cpu_compat, workaround 6) does not build, so the sharding is PyTorch's
``ZeroRedundancyOptimizer`` (ZeRO stage 1): each data-parallel rank owns a partition of the
parameters, keeps AdamW state for those alone and steps them, then every rank broadcasts the
parameters it owns. Gradients are still all-reduced (and clipped) whole on every rank before the
step, so the update is the unsharded one; what changes is the optimizer state per rank (about 1/DP).

With one data-parallel rank there is nothing to shard and the plain optimizer is returned.

Checkpoints: each data-parallel rank saves its own partition's state (:func:`state_file`); a resume
must use the same data-parallel size, and says so by name otherwise.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from megatron.core import parallel_state as ps
from torch import nn
from torch.distributed.optim import ZeroRedundancyOptimizer

from mtp_trainer import mtp_modes
from mtp_trainer.config import ConfigError, TrainerConfig


def _dp_group() -> tuple[Any, int]:
    if not (dist.is_initialized() and ps.model_parallel_is_initialized()):
        return None, 1
    group = ps.get_data_parallel_group()
    return group, dist.get_world_size(group)


def build_optimizer(model: nn.Module, cfg: TrainerConfig) -> torch.optim.Optimizer:
    """AdamW over the trainable parameters, trunk and MTP as separate groups (same hyperparameters);
    sharded over the data-parallel group when ``cfg.parallel.distributed_optimizer`` and DP > 1."""
    groups = [
        {"params": [p for _, p in mtp_modes.trunk_parameters(model) if p.requires_grad], "name": "trunk"},
        {"params": [p for _, p in mtp_modes.mtp_parameters(model) if p.requires_grad], "name": "mtp"},
    ]
    groups = [g for g in groups if g["params"]]
    o = cfg.optim
    kwargs: dict[str, Any] = {"lr": o.learning_rate, "betas": o.betas, "weight_decay": o.weight_decay, "eps": 1e-8}
    group, dp = _dp_group()
    if cfg.parallel.distributed_optimizer and dp > 1:
        if cfg.parallel.expert_parallel_size > 1:
            raise ConfigError(
                "spec.trainer.strategy.distributedOptimizer with expertParallelSize > 1: expert-parallel ranks hold "
                "different experts, which the sharded optimizer cannot partition; set distributedOptimizer: false"
            )
        return ZeroRedundancyOptimizer(groups, optimizer_class=torch.optim.AdamW, process_group=group, **kwargs)
    return torch.optim.AdamW(groups, **kwargs)


def is_sharded(optimizer: torch.optim.Optimizer) -> bool:
    return isinstance(optimizer, ZeroRedundancyOptimizer)


def state_file(directory: Path, optimizer: torch.optim.Optimizer | None, tp_rank: int, pp_suffix: str = "") -> Path:
    """This rank's optimizer file: ``optim_tp{t}.pt`` (the whole state, written by data-parallel rank 0)
    or, sharded, ``optim_tp{t}_dp{d}of{D}.pt`` (this data-parallel rank's partition); ``pp_suffix`` is
    ``_pp{p}`` / ``_ep{e}`` with pipeline / expert parallel (``checkpoint.pp_suffix``)."""
    if optimizer is not None and is_sharded(optimizer):
        group, dp = _dp_group()
        rank = dist.get_rank(group) if group is not None else 0
        return directory / f"optim_tp{tp_rank}{pp_suffix}_dp{rank}of{dp}.pt"
    return directory / f"optim_tp{tp_rank}{pp_suffix}.pt"


def state_dict(optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """What this rank saves: the local partition's state when sharded (no gather to one rank)."""
    if isinstance(optimizer, ZeroRedundancyOptimizer):
        return optimizer.optim.state_dict()
    return optimizer.state_dict()


def load_state_dict(optimizer: torch.optim.Optimizer, path: Path) -> None:
    """Restore from ``path`` (this rank's :func:`state_file`), with the fix named when the checkpoint
    was written with another optimizer layout."""
    if not path.is_file():
        written = sorted(p.name for p in path.parent.glob("optim_tp*.pt"))
        raise FileNotFoundError(
            f"{path.name} is missing from {path.parent} (it has {', '.join(written) or 'no optimizer state'}): the "
            "checkpoint was written with another spec.trainer.strategy.distributedOptimizer setting or another "
            "data-parallel size; resume with the same layout or start with --fresh"
        )
    state = torch.load(path, map_location="cpu", weights_only=False)
    if isinstance(optimizer, ZeroRedundancyOptimizer):
        optimizer.optim.load_state_dict(state)
    else:
        optimizer.load_state_dict(state)


def state_numel(optimizer: torch.optim.Optimizer) -> int:
    """Elements of optimizer state this rank holds (the moments), for the memory report."""
    inner = optimizer.optim if isinstance(optimizer, ZeroRedundancyOptimizer) else optimizer
    return sum(int(v.numel()) for s in inner.state.values() for v in s.values() if torch.is_tensor(v) and v.dim() > 0)
