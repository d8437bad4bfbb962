"""The training loop: plain PyTorch around Megatron modules (see cpu_compat, workaround 6).

One optimizer step = ``grad_accum_steps`` micro-batches per data-parallel rank, gradients averaged
over the data-parallel group, one clip per mode group (``mtp_modes.clip_groups``), AdamW, then a
linear-warmup + cosine learning rate computed from the step number alone (so a resume needs no
scheduler state). Evaluation runs the MTP head even in ``disabled`` mode: a frozen head's
agreement on held-out data is exactly what drifts when the trunk trains without it.
"""

from __future__ import annotations

import math
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from megatron.core import parallel_state as ps
from torch import nn

from mtp_trainer import checkpoint, distributed, moe, mtp_modes, pipeline
from mtp_trainer.config import OptimConfig, TrainerConfig
from mtp_trainer.data import BatchSchedule, PackedRows, eval_batches
from mtp_trainer.metrics import Metrics, StepRecord
from mtp_trainer.optimizer import build_optimizer

__all__ = [
    "Trainer",
    "allreduce_grads",
    "build_optimizer",
    "clip_grad_norm",
    "finish_and_clip",
    "is_expert_parallel",
    "lr_at",
]


def lr_at(step: int, o: OptimConfig) -> float:
    """Learning rate for optimizer step ``step`` (0-based)."""
    if o.warmup_steps and step < o.warmup_steps:
        return o.learning_rate * (step + 1) / o.warmup_steps
    span = max(o.max_steps - o.warmup_steps, 1)
    progress = min(max(step - o.warmup_steps, 0) / span, 1.0)
    return o.min_learning_rate + 0.5 * (o.learning_rate - o.min_learning_rate) * (1 + math.cos(math.pi * progress))


def is_expert_parallel(p: nn.Parameter) -> bool:
    """A routed expert's weight under expert parallel: each expert-parallel rank holds other experts
    (Megatron marks them ``allreduce=False``)."""
    return not getattr(p, "allreduce", True)


def allreduce_grads(model: nn.Module, group: Any = None) -> None:
    """Average every gradient over the data-parallel group (Megatron's, unless ``group`` is given);
    a no-op without torch.distributed or with one rank. Used by SFT and by the RL policy step.

    Under expert parallel a routed expert lives on one rank of each expert-parallel group, and its
    gradient already sums the losses of every rank in that group (the token dispatcher brought their
    tokens to it): it is summed over the ranks that hold the same expert (Megatron's expert-data-parallel
    group) and divided by the whole data-parallel size, so that it is the same mean over every rank's
    loss as any other weight's."""
    if not dist.is_initialized():
        return
    group = group if group is not None else ps.get_data_parallel_group()
    size = dist.get_world_size(group)
    if size == 1:
        return
    expert_group = None
    for p in model.parameters():
        if p.grad is None:
            continue
        if is_expert_parallel(p):
            expert_group = expert_group or ps.get_expert_data_parallel_group()
            dist.all_reduce(p.grad, group=expert_group)
        else:
            dist.all_reduce(p.grad, group=group)
        p.grad.div_(size)


# Weights every TP rank holds whole but applies to its own heads only, so each rank's gradient is a
# partial sum: qk-layernorm (as in Megatron's finalize_model_grads) and the Gated DeltaNet's per-head
# output norm (measured: without the sum its gradient differs from the 1-process run).
TP_PARTIAL_GRADS = ("q_layernorm.weight", "k_layernorm.weight", "self_attention.out_norm.weight")


def allreduce_tensor_parallel_grads(model: nn.Module) -> None:
    """What Megatron's ``finalize_model_grads`` does across the TP group for weights every TP rank
    holds whole but sees only part of the input to: sum the per-head norms' grads (``TP_PARTIAL_GRADS``)
    and the sequence-parallel norms' grads; average ``average_gradients_across_tp_domain`` ones. A no-op
    with one TP rank."""
    if not (dist.is_initialized() and ps.model_parallel_is_initialized()):
        return
    group = ps.get_tensor_model_parallel_group()
    size = dist.get_world_size(group)
    if size == 1:
        return
    sequence_parallel = bool(getattr(getattr(model, "config", None), "sequence_parallel", False))
    for name, p in model.named_parameters():
        if p.grad is None:
            continue
        if getattr(p, "average_gradients_across_tp_domain", False):
            dist.all_reduce(p.grad, group=group)
            p.grad.div_(size)
        elif (sequence_parallel and getattr(p, "sequence_parallel", False)) or name.endswith(TP_PARTIAL_GRADS):
            dist.all_reduce(p.grad, group=group)


def clip_grad_norm(params: list[nn.Parameter], max_norm: float) -> float:
    """``torch.nn.utils.clip_grad_norm_`` over the whole model, tensor- and pipeline-parallel aware:
    the global L2 norm sums the squares of every TP shard (all-reduced over the TP group), counts a
    parameter that each TP rank holds whole (norms, replicated weights) once, and sums the stages
    (all-reduced over the pipeline group; the last stage's embedding copy, Megatron's ``shared``,
    is counted on the first stage only) and the expert-parallel ranks' own experts (all-reduced over
    the expert tensor-and-model-parallel group). Every rank gets the same norm and the same scale.
    With one TP rank, one stage and one expert-parallel rank it is torch's function (same formula,
    same 1e-6). With pipeline parallel
    every stage must call it for the same groups, even one that holds none of the group's weights."""
    grads = [p.grad for p in params if p.grad is not None]
    tp_group = ps.get_tensor_model_parallel_group() if ps.model_parallel_is_initialized() else None
    tp = dist.get_world_size(tp_group) if tp_group is not None and dist.is_initialized() else 1
    pp = pipeline.size()
    ep = ps.get_expert_model_parallel_world_size() if tp_group is not None and dist.is_initialized() else 1
    if tp == 1 and pp == 1 and ep == 1:
        return float(torch.nn.utils.clip_grad_norm_(params, max_norm)) if grads else 0.0
    device = grads[0].device if grads else distributed.collective_device()
    sharded = torch.zeros((), dtype=torch.float32, device=device)
    whole = torch.zeros((), dtype=torch.float32, device=device)
    experts = torch.zeros((), dtype=torch.float32, device=device)
    for p in params:
        if p.grad is None or getattr(p, "shared", False):
            continue
        sq = p.grad.detach().float().pow(2).sum()
        if is_expert_parallel(p):
            experts += sq  # this expert-parallel rank's experts only
        elif getattr(p, "tensor_model_parallel", False):
            sharded += sq
        else:
            whole += sq  # identical on every TP rank: counted once
    if tp > 1:
        dist.all_reduce(sharded, group=tp_group)
    if ep > 1:
        dist.all_reduce(experts, group=ps.get_expert_tensor_and_model_parallel_group())
    squares = sharded + whole + experts
    if pp > 1:
        dist.all_reduce(squares, group=ps.get_pipeline_model_parallel_group())
    total = squares.sqrt()
    coef = torch.clamp(max_norm / (total + 1e-6), max=1.0)
    for g in grads:
        g.mul_(coef.to(g.dtype))
    return float(total)


def finish_and_clip(model: nn.Module, mode: str, max_norm: float, dp_group: Any = None) -> list[float]:
    """After backward, before the optimizer step (SFT and the RL policy step alike): Megatron's
    ``finalize_model_grads`` pieces (tensor-parallel partial sums, the pipeline's embedding copy, the
    data-parallel mean), then one clip per ``mtp_modes.clip_groups`` group; returns each group's norm
    before clipping. ``max_norm`` 0 means no clip. With pipeline parallel every stage joins each group's
    norm, even one that holds none of its weights."""
    allreduce_tensor_parallel_grads(model)
    pipeline.allreduce_embedding_grads(model)
    allreduce_grads(model, dp_group)
    limit = max_norm if max_norm > 0 else float("inf")
    norms = []
    for group in mtp_modes.clip_groups(model, mode):
        with_grad = [p for p in group if p.grad is not None]
        if with_grad or pipeline.size() > 1:
            norms.append(clip_grad_norm(with_grad, limit))
    return norms


@dataclass
class _Sums:
    lm_loss: float = 0.0
    lm_correct: float = 0.0
    lm_tokens: float = 0.0
    n: int = 0
    mtp: mtp_modes.DepthSums = field(default_factory=mtp_modes.DepthSums)

    @classmethod
    def of_depth(cls, depth: int) -> _Sums:
        """Zeros for ``depth`` MTP depths: with pipeline parallel only the last stage adds outputs, and
        every stage's vector must have the same length for the reduction."""
        return cls(mtp=mtp_modes.DepthSums([0.0] * depth, [0.0] * depth, [0.0] * depth))

    def add(self, out: mtp_modes.ForwardOutput) -> None:
        self.n += 1
        self.lm_loss += float(out.lm_loss.detach())
        self.lm_correct += out.lm_correct
        self.lm_tokens += out.lm_tokens
        self.mtp.add(out)

    def reduced(self, group: Any) -> tuple[float, list[float], list[float], float]:
        """Mean losses and agreement over micro-batches and data-parallel ranks."""
        stats = [self.lm_loss, float(self.n), self.lm_correct, self.lm_tokens, *self.mtp.flat()]
        vec = torch.tensor(pipeline.sum_over_stages(stats), dtype=torch.float64)
        if dist.is_initialized() and dist.get_world_size(group) > 1:
            dist.all_reduce(vec, group=group)
        n = max(vec[1].item(), 1.0)
        lm = vec[0].item() / n
        lm_agree = vec[2].item() / max(vec[3].item(), 1.0)
        losses, agree = mtp_modes.DepthSums.means(vec[4:].tolist(), self.mtp.depth, n)
        return lm, losses, agree, lm_agree


@dataclass
class Trainer:
    cfg: TrainerConfig
    model: Any  # GPTModel
    optimizer: torch.optim.Optimizer
    schedule: BatchSchedule
    val_rows: PackedRows | None
    metrics: Metrics
    device: torch.device
    out_dir: Path
    tokenizer: Any
    stopped_at: int | None = None  # the step saved when SIGTERM stopped the run early
    expert_load: moe.ExpertLoad | None = None  # MoE models: tokens per expert per layer (moe.py)

    def __post_init__(self) -> None:
        if self.expert_load is None and moe.routers(self.model):
            self.expert_load = moe.ExpertLoad(self.model)

    def _dp_group(self) -> Any:
        return ps.get_data_parallel_group() if dist.is_initialized() else None

    def train_step(self, step: int) -> StepRecord:
        t0 = time.perf_counter()
        cfg = self.cfg
        mode = cfg.mtp.mode
        self.model.train()
        lr = lr_at(step, cfg.optim)
        for g in self.optimizer.param_groups:
            g["lr"] = lr
        self.optimizer.zero_grad(set_to_none=True)
        sums = _Sums.of_depth(self._depth(mode))
        accum = self.schedule.grad_accum_steps
        if self.expert_load is not None:
            moe.set_aux_loss_scale(1.0 / accum, self.device)  # the aux loss is averaged like the main loss
        batches = [self.schedule.micro_batch(step, micro).to(self.device) for micro in range(accum)]

        def stage(batch: mtp_modes.Batch, received: torch.Tensor | None) -> mtp_modes.ForwardOutput | torch.Tensor:
            return mtp_modes.stage_forward(self.model, batch, mode, cfg.mtp.loss_scaling_factor, received)

        for out in pipeline.run(self.model, batches, stage, 1.0 / accum):
            sums.add(out)
        norms = finish_and_clip(self.model, mode, cfg.optim.clip_grad)
        self.optimizer.step()
        lm, losses, agree, lm_agree = sums.reduced(self._dp_group())
        dt = time.perf_counter() - t0
        tokens = self.schedule.global_batch_size() * cfg.data.seq_length
        aux, load = None, None
        if self.expert_load is not None:
            aux = moe.take_aux_loss(accum)
            load = self.expert_load.take(self._dp_group(), self.device)
        return StepRecord(
            step=step + 1,
            lm_loss=lm,
            mtp_loss=losses,
            mtp_agreement=agree,
            lm_agreement=lm_agree,
            tokens_per_s=tokens / dt,
            step_s=dt,
            learning_rate=lr,
            grad_norm=norms,
            moe_aux_loss=aux,
            expert_load=load,
        )

    def _depth(self, mode: str) -> int:
        """MTP depths whose losses this mode reports (0 in ``disabled``)."""
        return self.cfg.model.mtp_num_layers if mode != mtp_modes.DISABLED else 0

    @torch.no_grad()
    def evaluate(self, step: int, max_batches: int | None = None) -> StepRecord | None:
        """Held-out loss and MTP agreement (same numbers on every rank; rank 0 reports)."""
        if self.val_rows is None or len(self.val_rows) == 0:
            return None
        self.model.eval()
        t0 = time.perf_counter()
        mode = mtp_modes.JOINT if self.cfg.model.mtp_num_layers else mtp_modes.DISABLED
        sums = _Sums.of_depth(self._depth(mode))
        n = max_batches or self.cfg.schedule.eval_batches
        batches = [b.to(self.device) for b in eval_batches(self.val_rows, self.cfg.data.micro_batch_size, n)]

        def stage(batch: mtp_modes.Batch, received: torch.Tensor | None) -> mtp_modes.ForwardOutput | torch.Tensor:
            return mtp_modes.stage_forward(self.model, batch, mode, self.cfg.mtp.loss_scaling_factor, received)

        for out in pipeline.run(self.model, batches, stage, 1.0, backward=False):
            sums.add(out)
        lm, losses, agree, lm_agree = sums.reduced(None)
        rec = StepRecord(
            step=step,
            lm_loss=lm,
            mtp_loss=losses,
            mtp_agreement=agree,
            lm_agreement=lm_agree,
            tokens_per_s=0.0,
            step_s=time.perf_counter() - t0,
            learning_rate=lr_at(max(step - 1, 0), self.cfg.optim),
            split="validation",
        )
        self.metrics.record(rec)
        return rec

    def save(self, step: int) -> Path:
        return checkpoint.save(self.out_dir, step, self.model, self.optimizer, self.cfg, self.tokenizer)

    def run(self, start_step: int) -> list[StepRecord]:
        """Train from ``start_step`` (completed steps) to ``max_steps``; eval/save on schedule. On SIGTERM,
        save the step every rank has finished and return early (``stopped_at``)."""
        cfg = self.cfg
        history: list[StepRecord] = []
        if start_step == 0:
            self.evaluate(0)
        with sigterm_flag() as stop:
            for step in range(start_step, cfg.optim.max_steps):
                rec = self.train_step(step)
                self.metrics.record(rec)
                history.append(rec)
                done = rec.step
                last = done == cfg.optim.max_steps
                if any_rank(stop[0], self.device) and not last:
                    self.save(done)
                    self.stopped_at = done
                    break
                if done % cfg.schedule.eval_steps == 0 or last:
                    self.evaluate(done)
                if done % cfg.schedule.save_steps == 0 or last:
                    self.save(done)
        return history


class sigterm_flag:
    """SIGTERM while training sets ``flag[0]`` instead of killing the process; the loop checks it after
    each step (agreed over all ranks), saves a checkpoint and stops. The previous handler comes back after."""

    def __enter__(self) -> list[bool]:
        self.flag = [False]
        self.previous = signal.getsignal(signal.SIGTERM)

        def handler(signum: int, frame: object) -> None:
            self.flag[0] = True

        try:
            signal.signal(signal.SIGTERM, handler)
        except ValueError:  # not the main thread (tests): no handler, the flag stays False
            self.previous = None
        return self.flag

    def __exit__(self, *exc: object) -> None:
        if self.previous is not None:
            signal.signal(signal.SIGTERM, self.previous)


def any_rank(flag: bool, device: torch.device) -> bool:
    """True on every rank when any rank saw SIGTERM (ranks may get it at different steps)."""
    if not dist.is_initialized():
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)
