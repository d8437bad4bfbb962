"""Full (unsharded) Megatron state dicts from tensor-parallel shards, and back.

Export and import work on the full tensors so that the family mappings never think about TP.
Megatron tags every TP-split parameter with ``tensor_model_parallel=True`` and ``partition_dim``;
the shards are contiguous blocks along that dim, except SwiGLU's ``linear_fc1`` whose shard on
each rank is ``[gate_r; up_r]`` (so the full tensor is ``[gate_0..gate_n; up_0..up_n]``).
Experts are split over the expert-tensor-parallel group, which is the TP group when expert
parallel is 1 (the only expert layout this trainer builds with TP > 1).
With TP=1 both functions are the identity on the state dict.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from megatron.core import parallel_state as ps
from torch import nn


def _is_fc1(name: str) -> bool:
    """Every SwiGLU input projection: the dense MLP's, each routed expert's and the shared expert's
    (``...mlp.linear_fc1``, ``...mlp.experts.local_experts.<i>.linear_fc1``,
    ``...mlp.shared_experts.linear_fc1``); every MLP of these families is gated."""
    return name.endswith("linear_fc1.weight")


def full_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every parameter (and persistent buffer) of ``model`` as a full CPU tensor, on every rank."""
    tp = ps.get_tensor_model_parallel_world_size()
    out: dict[str, torch.Tensor] = {}
    params = dict(model.named_parameters())
    for name, tensor in model.state_dict().items():
        if "_extra_state" in name:
            continue
        t = tensor.detach()
        p = params.get(name)
        if tp > 1 and p is not None and getattr(p, "tensor_model_parallel", False):
            dim = int(getattr(p, "partition_dim", 0))
            parts = [torch.empty_like(t) for _ in range(tp)]
            dist.all_gather(parts, t.contiguous(), group=ps.get_tensor_model_parallel_group())
            if _is_fc1(name):
                halves = [x.chunk(2, dim=0) for x in parts]
                t = torch.cat([h[0] for h in halves] + [h[1] for h in halves], dim=0)
            else:
                t = torch.cat(parts, dim=dim)
        out[name] = t.cpu().clone()
    return out


def shard_state_dict(model: nn.Module, full: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """This rank's slice of a full state dict, shaped like ``model.state_dict()``."""
    tp = ps.get_tensor_model_parallel_world_size()
    rank = ps.get_tensor_model_parallel_rank()
    params = dict(model.named_parameters())
    out: dict[str, torch.Tensor] = {}
    for name, ref in model.state_dict().items():
        if "_extra_state" in name:
            continue
        if name not in full:
            raise KeyError(f"checkpoint has no tensor for {name}")
        t = full[name]
        p = params.get(name)
        if tp > 1 and p is not None and getattr(p, "tensor_model_parallel", False):
            dim = int(getattr(p, "partition_dim", 0))
            if _is_fc1(name):
                gate, up = t.chunk(2, dim=0)
                t = torch.cat([gate.chunk(tp, dim=0)[rank], up.chunk(tp, dim=0)[rank]], dim=0)
            else:
                t = t.chunk(tp, dim=dim)[rank]
        if tuple(t.shape) != tuple(ref.shape):
            raise ValueError(f"{name}: checkpoint shape {tuple(t.shape)} != model shape {tuple(ref.shape)}")
        out[name] = t.to(dtype=ref.dtype)
    return out
