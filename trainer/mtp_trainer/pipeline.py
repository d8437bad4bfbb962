"""Pipeline parallel: run micro-batches through the stages of one pipeline, forward and backward.

Why our own schedule: Megatron's (``pipeline_parallel/schedules.py``, ``p2p_communication.py``)
allocates its receive buffers on ``torch.cuda.current_device()`` and needs CUDA streams, so it cannot
run on CPU (cpu_compat, workaround 6). This one is GPipe's: every micro-batch forward through the
stage, then every micro-batch backward, with blocking point-to-point sends of the hidden states
(forward) and of their gradients (backward) between neighbouring stages. The order of sends and
receives is the same on both sides of each link, so it cannot deadlock, and the gradients are
exactly those of the one-process run (the tests compare them). It keeps every micro-batch's
activations until the backward phase; 1F1B would bound that by the number of stages.

The stage function is ``mtp_modes.stage_forward`` (or a caller's closure over it): on the last
stage it returns the ``ForwardOutput`` whose ``loss`` is scaled and back-propagated; on any other
stage it returns the hidden states to send on. The last stage holds the output layer, the MTP
block and a copy of the embedding (Megatron's placement), so only it sees losses: callers reduce
their statistics over the pipeline group with :func:`sum_over_stages`.

With one stage :func:`run` is the plain loop (forward then backward per micro-batch), so the
pipeline-free path is unchanged.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.distributed as dist
from megatron.core import parallel_state as ps
from torch import Tensor, nn

from mtp_trainer import distributed
from mtp_trainer.mtp_modes import Batch, ForwardOutput

StageFn = Callable[[Batch, Tensor | None], ForwardOutput | Tensor]


def size() -> int:
    """Pipeline stages in this run (1 without torch.distributed)."""
    if not (dist.is_initialized() and ps.model_parallel_is_initialized()):
        return 1
    return int(ps.get_pipeline_model_parallel_world_size())


def is_last_stage() -> bool:
    return size() == 1 or bool(ps.is_pipeline_last_stage())


def is_first_stage() -> bool:
    return size() == 1 or bool(ps.is_pipeline_first_stage())


def _hidden_shape(model: Any, batch: Batch) -> tuple[int, int, int]:
    """[s, b, h] of the hidden states a stage sends; [s / tp, b, h] under sequence parallel."""
    b, s = batch.input_ids.shape
    cfg = model.config
    if cfg.sequence_parallel:
        s //= ps.get_tensor_model_parallel_world_size()
    return s, b, cfg.hidden_size


def _recv(shape: tuple[int, ...], model: Any, src: int, device: torch.device) -> Tensor:
    t = torch.empty(shape, dtype=model.config.params_dtype, device=device)
    dist.recv(t, src=src)
    return t


def run(
    model: nn.Module, batches: Sequence[Batch], stage: StageFn, loss_scale: float, backward: bool = True
) -> list[ForwardOutput]:
    """Forward (and, with ``backward``, backward of ``loss * loss_scale``) every micro-batch; returns
    the last stage's outputs (an empty list on any other stage)."""
    if size() == 1:
        outs = []
        for batch in batches:
            out = stage(batch, None)
            assert isinstance(out, ForwardOutput)
            if backward:
                (out.loss * loss_scale).backward()
            outs.append(out)
        return outs
    return _gpipe(model, batches, stage, loss_scale, backward)


def _gpipe(
    model: Any, batches: Sequence[Batch], stage: StageFn, loss_scale: float, backward: bool
) -> list[ForwardOutput]:
    first, last = is_first_stage(), is_last_stage()
    prev, nxt = ps.get_pipeline_model_parallel_prev_rank(), ps.get_pipeline_model_parallel_next_rank()
    device = next(model.parameters()).device
    inputs: list[Tensor | None] = []
    sent: list[Tensor] = []
    outs: list[ForwardOutput] = []
    for batch in batches:
        received = None
        if not first:
            received = _recv(_hidden_shape(model, batch), model, prev, device)
            received.requires_grad_(backward and torch.is_grad_enabled())
        out = stage(batch, received)
        inputs.append(received)
        if last:
            assert isinstance(out, ForwardOutput)
            outs.append(out)
        else:
            assert isinstance(out, Tensor)
            dist.send(out.detach().contiguous(), dst=nxt)
            sent.append(out)
    if not (backward and torch.is_grad_enabled()):
        return outs
    for i in range(len(batches)):
        if last:
            (outs[i].loss * loss_scale).backward()
        else:
            grad = _recv(tuple(sent[i].shape), model, nxt, device)
            torch.autograd.backward(sent[i], grad_tensors=grad)
        if not first:
            received = inputs[i]
            assert received is not None
            g = received.grad if received.grad is not None else torch.zeros_like(received)
            dist.send(g.contiguous(), dst=prev)
    return outs


def sum_over_stages(values: list[float]) -> list[float]:
    """Sum a statistics vector over the pipeline group: the last stage holds the numbers, every other
    stage passes zeros of the same length, and every stage gets the last stage's numbers back."""
    if size() == 1:
        return values
    vec = torch.tensor(values, dtype=torch.float64, device=distributed.collective_device())
    dist.all_reduce(vec, group=ps.get_pipeline_model_parallel_group())
    return vec.tolist()


def allreduce_embedding_grads(model: nn.Module) -> None:
    """Megatron's ``_allreduce_word_embedding_grads``: the first stage's word embedding and the last
    stage's copy (used by the MTP block and a tied output layer) are one weight, so their gradients
    are summed over the embedding group (first and last stage of each pipeline)."""
    if size() == 1 or not ps.is_rank_in_embedding_group(ignore_virtual=True):
        return
    tied = bool(getattr(model, "share_embeddings_and_output_weights", False))
    if not tied and not getattr(model.config, "mtp_num_layers", None):
        return  # the last stage holds an untied output layer only: nothing is shared
    group = ps.get_embedding_group()
    if dist.get_world_size(group) == 1:
        return
    weight = model.shared_embedding_or_output_weight()  # type: ignore[operator]
    if weight is None or not weight.requires_grad:
        return
    if weight.grad is None:
        weight.grad = torch.zeros_like(weight)
    dist.all_reduce(weight.grad, group=group)
