"""Full (unsharded) Megatron state dicts from tensor-parallel shards, and back.

Export and import work on the full tensors so that the family mappings never think about TP.
Megatron tags every TP-split parameter with ``tensor_model_parallel=True`` and ``partition_dim``;
the shards are contiguous blocks along that dim, except SwiGLU's ``linear_fc1`` whose shard on
each rank is ``[gate_r; up_r]`` (so the full tensor is ``[gate_0..gate_n; up_0..up_n]``).
Experts are split over the expert-tensor-parallel group, which is the TP group when expert
parallel is 1 (the only expert layout this trainer builds with TP > 1).
With pipeline parallel each stage holds its own layers, numbered from 0 (``decoder.layers.0`` of
stage 1 is global layer ``L/P``), and the last stage a copy of the word embedding (for the MTP
block and a tied output layer). The full state dict is the one-stage model's: global layer numbers,
one embedding (the first stage's), no untied ``output_layer.weight`` when the weights are tied.
With expert parallel each rank of an expert-parallel group holds ``E / EP`` of every MoE layer's
routed experts, numbered from 0 (``local_experts.0`` of expert-parallel rank 1 is expert ``E / EP``);
the full state dict numbers them globally.
With TP=1, PP=1 and EP=1 both functions are the identity on the state dict.
"""

from __future__ import annotations

import re

import torch
import torch.distributed as dist
from megatron.core import parallel_state as ps
from torch import nn


def _is_fc1(name: str) -> bool:
    """Every SwiGLU input projection: the dense MLP's, each routed expert's and the shared expert's
    (``...mlp.linear_fc1``, ``...mlp.experts.local_experts.<i>.linear_fc1``,
    ``...mlp.shared_experts.linear_fc1``); every MLP of these families is gated."""
    return name.endswith("linear_fc1.weight")


_LAYER = re.compile(r"^decoder\.layers\.(\d+)\.")
_EXPERT = re.compile(r"\.mlp\.experts\.local_experts\.(\d+)\.")
_EMBEDDING = "embedding.word_embeddings.weight"
_OUTPUT = "output_layer.weight"


def _pp() -> int:
    return ps.get_pipeline_model_parallel_world_size() if dist.is_initialized() else 1


def _layer_offset(model: nn.Module) -> int:
    """Global index of this stage's first layer (stages build equal shares, model_provider.check)."""
    if _pp() == 1:
        return 0
    return ps.get_pipeline_model_parallel_rank() * len(model.decoder.layers)  # type: ignore[union-attr,arg-type]


def _ep() -> int:
    return ps.get_expert_model_parallel_world_size() if dist.is_initialized() else 1


def _expert_offset(model: nn.Module) -> int:
    """Global index of this expert-parallel rank's first routed expert."""
    if _ep() == 1:
        return 0
    experts = int(getattr(model.config, "num_moe_experts", None) or 0)  # type: ignore[union-attr,arg-type]
    return ps.get_expert_model_parallel_rank() * (experts // _ep())


def global_name(name: str, offset: int, expert_offset: int = 0) -> str:
    """``decoder.layers.<i>.`` of a stage -> ``decoder.layers.<i + offset>.`` of the whole model, and
    ``.mlp.experts.local_experts.<j>.`` -> ``<j + expert_offset>``."""
    name = _LAYER.sub(lambda m: f"decoder.layers.{int(m.group(1)) + offset}.", name, count=1)
    if expert_offset:
        name = _EXPERT.sub(lambda m: f".mlp.experts.local_experts.{int(m.group(1)) + expert_offset}.", name, count=1)
    return name


def _is_stage_copy(model: nn.Module, name: str) -> bool:
    """Tensors a later stage holds that the one-stage model does not: the embedding's copy, and an
    output layer's weight when the embedding is tied to it."""
    if _pp() == 1 or ps.is_pipeline_first_stage():
        return False
    tied = bool(getattr(model, "share_embeddings_and_output_weights", False))
    return name == _EMBEDDING or (tied and name == _OUTPUT)


def needed_names(model: nn.Module) -> list[str]:
    """The full-state-dict names this rank loads from (its stage's layers, the embedding for a copy)."""
    offset, experts = _layer_offset(model), _expert_offset(model)
    names = (_EMBEDDING if _is_stage_copy(model, k) else global_name(k, offset, experts) for k in model.state_dict())
    return list(dict.fromkeys(n for n in names if "_extra_state" not in n))


def full_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every parameter (and persistent buffer) of the whole model as a full CPU tensor under its
    one-stage name, on every rank (tensor-parallel shards gathered, pipeline stages merged)."""
    local = _tp_full_state_dict(model)
    if _ep() > 1:
        local = _join_experts(model, local)
    if _pp() == 1:
        return local
    offset = _layer_offset(model)
    mine = {global_name(k, offset): v for k, v in local.items() if not _is_stage_copy(model, k)}
    stages: list[dict[str, torch.Tensor] | None] = [None] * _pp()
    dist.all_gather_object(stages, mine, group=ps.get_pipeline_model_parallel_group())
    out: dict[str, torch.Tensor] = {}
    for part in stages:
        out.update(part or {})
    return out


def _join_experts(model: nn.Module, local: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """This stage's tensors with every expert-parallel rank's routed experts, numbered globally."""
    offset = _expert_offset(model)
    mine = {global_name(k, 0, offset): v for k, v in local.items() if _EXPERT.search(k)}
    ranks: list[dict[str, torch.Tensor] | None] = [None] * _ep()
    dist.all_gather_object(ranks, mine, group=ps.get_expert_model_parallel_group())
    out = {k: v for k, v in local.items() if not _EXPERT.search(k)}
    for part in ranks:
        out.update(part or {})
    return out


def _tp_full_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """This stage's tensors with the tensor-parallel shards gathered (local names)."""
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
    """This rank's slice of a full (one-stage, unsharded) state dict, shaped like ``model.state_dict()``:
    this pipeline stage's layers and expert-parallel rank's experts, with the embedding copied where a
    later stage holds one."""
    tp = ps.get_tensor_model_parallel_world_size()
    rank = ps.get_tensor_model_parallel_rank()
    offset, experts = _layer_offset(model), _expert_offset(model)
    params = dict(model.named_parameters())
    out: dict[str, torch.Tensor] = {}
    for name, ref in model.state_dict().items():
        if "_extra_state" in name:
            continue
        source = _EMBEDDING if _is_stage_copy(model, name) else global_name(name, offset, experts)
        if source not in full:
            raise KeyError(f"checkpoint has no tensor for {source}")
        t = full[source]
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
