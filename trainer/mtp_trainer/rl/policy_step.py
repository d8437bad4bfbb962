"""The GRPO policy update on the Megatron GPTModel, with the MTP head per training mode.

One call of :func:`rl_step` takes this rank's rollout sequences (prompt + sampled response), their
advantages and (optionally) the generating policy's log-probabilities, and runs ``mini_batches``
optimizer steps. The forward is ``mtp_modes.forward`` with the GRPO loss plugged in as the trunk's
loss, so the three MTP modes keep exactly the cuts they have in SFT (docs/mtp-training-modes.md):

- ``standalone``: the MTP head trains on the same rollout sequences with its own cross-entropy on the
  response tokens, through the three cuts; the trunk's gradient is the GRPO gradient alone.
- ``disabled``: the MTP forward is skipped and its (frozen) weights never change.
- ``joint``: the MTP cross-entropy is added with the scaling factor and reaches the trunk.

Old log-probabilities: when the caller passes none, they are the weights' before the first update of
the step. The first mini-batch's update forward runs those weights, so its own log-probs (detached)
serve: the ratio is exactly 1 by construction, whatever the BLAS rounding, and no extra pass runs.
The later mini-batches' are recomputed under ``no_grad`` before the first update, with the same
micro-batches as their update; those are off-policy by the earlier updates and the clip bounds them.

Data parallel: each rank passes its own share of the sequences; the policy loss is normalised by the
mini-batch's response-token count summed over ranks, the gradients get the SFT loop's
finish (``train_loop.finish_and_clip``: data-parallel mean, tensor-parallel sums, the pipeline's
embedding copy, one clip per group), and the statistics are reduced over the group.

Tensor parallel: the ranks of one tensor-parallel group pass the same sequences (they share a
data-parallel rank). Log-probabilities and entropy come from the vocab-parallel logits without a
gather; the clip norm spans every shard (``train_loop.clip_grad_norm``), so each TP rank scales its
shard by the same factor and the update equals the one-process update.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist
from megatron.core import parallel_state as ps
from torch import Tensor, nn

from mtp_trainer import moe, mtp_modes, pipeline
from mtp_trainer.data import causal_batch
from mtp_trainer.mtp_modes import Batch
from mtp_trainer.rl import grpo
from mtp_trainer.rl.grpo import GRPOConfig
from mtp_trainer.train_loop import finish_and_clip


@dataclass(frozen=True)
class RolloutSequence:
    """One sampled sequence: the prompt's token ids (chat template applied, as the rollout saw them)
    and the response's (what the policy generated, end-of-turn token included if it was sampled)."""

    prompt: Sequence[int]
    response: Sequence[int]


PerToken = Tensor | Sequence[Sequence[float]]


# ------------------------------------------------------------------------------------- batches


def build_batch(sequences: Sequence[RolloutSequence], pad_id: int = 0, multiple_of: int = 1) -> Batch:
    """Prompt + response, right-padded to the longest sequence, as a ``data.causal_batch``:
    ``labels[i]`` is token ``i+1`` and ``loss_mask[i]`` is 1 exactly where token ``i+1`` is a
    response token (the prompt and the padding never count). Shape ``[b, L - 1]`` with ``L`` the
    longest ``len(prompt) + len(response)``, and ``L - 1`` rounded up to ``multiple_of`` (sequence
    parallel splits the sequence over the tensor-parallel ranks; causal attention makes the extra
    right padding invisible to every counted position)."""
    if not sequences:
        raise ValueError("no rollout sequences")
    for k, seq in enumerate(sequences):
        if len(seq.prompt) < 1:
            raise ValueError(f"sequence {k}: the prompt is empty (the first response token needs a position)")
    width = max(max(len(s.prompt) + len(s.response) for s in sequences), 2)
    width = 1 + -(-(width - 1) // max(multiple_of, 1)) * max(multiple_of, 1)
    tokens = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    target = torch.zeros((len(sequences), width - 1))
    for k, seq in enumerate(sequences):
        p, r = len(seq.prompt), len(seq.response)
        tokens[k, : p + r] = torch.tensor([*seq.prompt, *seq.response], dtype=torch.long)
        target[k, p - 1 : p - 1 + r] = 1.0
    return causal_batch(tokens, target)


def per_token(sequences: Sequence[RolloutSequence], values: PerToken, width: int) -> Tensor:
    """Per-response-token values (one list per sequence, ``len(response)`` long, e.g. vLLM's sampled
    log-probs) laid out like :func:`build_batch`'s labels ``[b, width]`` (0 elsewhere). A tensor is
    taken as already laid out."""
    if isinstance(values, Tensor):
        if values.shape != (len(sequences), width):
            raise ValueError(f"per-token tensor has shape {tuple(values.shape)}, expected {(len(sequences), width)}")
        return values.float()
    out = torch.zeros((len(sequences), width))
    for k, (seq, v) in enumerate(zip(sequences, values, strict=True)):
        if len(v) != len(seq.response):
            raise ValueError(f"sequence {k}: {len(v)} per-token values for {len(seq.response)} response tokens")
        p = len(seq.prompt)
        out[k, p - 1 : p - 1 + len(v)] = torch.tensor([float(x) for x in v])
    return out


def _rows(batch: Batch, idx: Tensor) -> Batch:
    return Batch(*(getattr(batch, f)[idx] for f in batch.__dataclass_fields__))


def _chunks(n: int, parts: int) -> list[Tensor]:
    return [c for c in torch.arange(n).tensor_split(parts) if len(c)]


def _micro_chunks(rows: Tensor, micro_batch_size: int) -> list[Tensor]:
    if micro_batch_size <= 0 or micro_batch_size >= len(rows):
        return [rows]
    return list(rows.split(micro_batch_size))


# ------------------------------------------------------------------------------------- per-token forward


def token_logprobs(model: Any, logits: Tensor, labels: Tensor) -> Tensor:
    """``log p(labels)`` ``[b, s]`` from vocab-parallel logits ``[s, b, v/tp]`` with gradient: minus
    Megatron's vocab-parallel cross-entropy (TP-aware, float32). It rewrites float32 logits in place."""
    return -model.compute_language_model_loss(labels, logits)


def sequence_multiple(model: Any) -> int:
    """What the batch's sequence length must be a multiple of: the TP size under sequence parallel."""
    cfg = getattr(model, "config", None)
    if cfg is not None and getattr(cfg, "sequence_parallel", False):
        return int(cfg.tensor_model_parallel_size)
    return 1


def _tp_group() -> Any:
    if ps.model_parallel_is_initialized() and ps.get_tensor_model_parallel_world_size() > 1:
        return ps.get_tensor_model_parallel_group()
    return None


@torch.no_grad()
def vocab_parallel_entropy(logits: Tensor) -> Tensor:
    """Entropy of the full next-token distribution ``[b, s]`` from vocab-parallel logits
    ``[s, b, v/tp]``, without gathering the vocabulary: max, sum exp and sum exp * logit are
    all-reduced over the tensor-parallel group (``H = log S - sum(e z) / S``, ``z = x - max``)."""
    x = logits.float()
    group = _tp_group()
    top = x.max(dim=-1).values
    if group is not None:
        dist.all_reduce(top, op=dist.ReduceOp.MAX, group=group)
    z = x - top[..., None]
    e = torch.exp(z)
    sums = torch.stack([e.sum(dim=-1), (e * z).sum(dim=-1)])
    if group is not None:
        dist.all_reduce(sums, group=group)
    return (torch.log(sums[0]) - sums[1] / sums[0]).transpose(0, 1)


def _logprob_stage(model: Any, got: list[Tensor]) -> pipeline.StageFn:
    """A pipeline stage function that runs the trunk alone (the MTP forward is skipped) and, on the
    last stage, appends each micro-batch's per-token log-probs of its labels to ``got``."""

    def stage(batch: Batch, received: Tensor | None) -> mtp_modes.ForwardOutput | Tensor:
        def lm_loss(logits: Tensor) -> Tensor:
            logp = token_logprobs(model, logits, batch.labels)
            got.append(logp.float())
            return logp.sum()

        return mtp_modes.stage_forward(model, batch, mtp_modes.DISABLED, 0.0, received, lm_loss=lm_loss)

    return stage


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


@torch.no_grad()
def sequence_logprobs(
    model: Any, sequences: Sequence[RolloutSequence], pad_id: int = 0, micro_batch_size: int = 0
) -> Tensor:
    """Per-token ``log p(token i+1 | tokens <= i)`` ``[b, L - 1]`` (float32, on CPU) under ``model``,
    laid out like :func:`build_batch`; meaningful where its ``loss_mask`` is 1 (and on the prompt),
    not on the padding. For the old-policy and reference log-probs."""
    batch = build_batch(sequences, pad_id, sequence_multiple(model))
    return _logprobs_in_chunks(model, batch, [torch.arange(len(sequences))], micro_batch_size)


def _logprobs_in_chunks(model: Any, batch: Batch, minis: list[Tensor], micro_batch_size: int) -> Tensor:
    """Log-probs of the rows of ``minis``, computed with exactly the micro-batches that the update
    will use (zeros elsewhere). With pipeline parallel
    only the last stage computes them (zeros elsewhere): it is the only stage that uses them."""
    device = _device(model)
    out = torch.zeros(batch.labels.shape)
    chunks = [rows for mini in minis for rows in _micro_chunks(mini, micro_batch_size)]
    got: list[Tensor] = []
    with torch.no_grad():
        pipeline.run(
            model, [_rows(batch, r).to(device) for r in chunks], _logprob_stage(model, got), 1.0, backward=False
        )
    for rows, logp in zip(chunks, got, strict=False):  # got is empty before the last stage
        out[rows] = logp.cpu()
    return out


def frozen_reference(model: nn.Module, build: Callable[[], nn.Module]) -> nn.Module:
    """A frozen copy of ``model`` for the KL term (make one only when ``kl_coef > 0``): ``build()``
    must return a fresh model of the same architecture (e.g. ``ModelProvider(...).provide``; Megatron
    modules hold process groups, which ``copy.deepcopy`` cannot copy). Eval mode, no gradients."""
    ref = build()
    ref.load_state_dict(model.state_dict())
    ref.eval()
    ref.requires_grad_(False)
    return ref


# ------------------------------------------------------------------------------------- the step


@dataclass
class _Acc:
    """Sums of one RL step (this rank), reduced over the data-parallel group at the end."""

    pg_loss: float = 0.0
    tokens: float = 0.0
    clip: float = 0.0
    kl_old: float = 0.0
    kl_ref: float = 0.0
    ratio: float = 0.0
    entropy: float = 0.0
    micro: int = 0
    mtp: mtp_modes.DepthSums = field(default_factory=mtp_modes.DepthSums)
    policy_losses: list[float] = field(default_factory=list)  # one per mini-batch (this rank's share)

    def add(self, stats: dict[str, float], entropy: list[Tensor], mask: Tensor, out: mtp_modes.ForwardOutput) -> None:
        t = stats["tokens"]
        self.tokens += t
        self.pg_loss += stats["pg_loss"]
        self.policy_losses[-1] += stats["loss"]
        self.clip += stats["clip_fraction"] * t
        self.kl_old += stats["approx_kl"] * t
        self.ratio += stats["ratio_mean"] * t
        self.kl_ref += stats.get("kl_ref", 0.0) * t
        if entropy:
            self.entropy += float((entropy[0] * mask).sum())
        self.micro += 1
        self.mtp.add(out)


def _reduce(values: list[float], group: Any) -> list[float]:
    vec = torch.tensor(values, dtype=torch.float64)
    if dist.is_initialized() and group is not None and dist.get_world_size(group) > 1:
        dist.all_reduce(vec, group=group)
    return vec.tolist()


def _dp(dp_group: Any) -> tuple[Any, int]:
    if dp_group is None and dist.is_initialized() and ps.model_parallel_is_initialized():
        dp_group = ps.get_data_parallel_group()
    size = dist.get_world_size(dp_group) if dp_group is not None and dist.is_initialized() else 1
    return dp_group, size


def _grpo_lm_loss(
    model: Any,
    mb: Batch,
    old: Tensor | None,
    adv: Tensor,
    ref: Tensor | None,
    cfg: GRPOConfig,
    n_tokens: float,
    scale: float,
    stats: dict[str, float],
    entropy: list[Tensor],
) -> mtp_modes.LMLoss:
    """The GRPO loss as ``mtp_modes.forward``'s trunk loss; fills ``stats`` and ``entropy``. ``old``
    None: the policy has not moved yet (the first mini-batch, old log-probs not given), so the old
    log-probs are this forward's own, detached: the ratio is 1 by construction."""

    def lm_loss(logits: Tensor) -> Tensor:
        if cfg.log_entropy:  # before the cross-entropy, which rewrites float32 logits
            entropy.append(vocab_parallel_entropy(logits))
        logp = token_logprobs(model, logits, mb.labels)
        loss, st = grpo.policy_loss(
            logp,
            logp.detach() if old is None else old,
            adv,
            mb.loss_mask,
            cfg.clip_low,
            cfg.clip_high,
            ref_logp=ref,
            kl_coef=cfg.kl_coef,
            num_tokens=n_tokens,
        )
        stats.update(st, loss=float(loss.detach()))
        # Averaging gradients over dp ranks must give the sum over ranks / n_tokens.
        return loss * scale if scale != 1 else loss

    return lm_loss


@dataclass
class _Pieces:
    """What one mini-batch's micro-batches share: the stage function of the GRPO update (the trunk's
    loss is GRPO's, the MTP depths' scale is a mean over the micro-batches, the SFT convention)."""

    model: Any
    mode: str
    cfg: GRPOConfig
    old: Tensor | None  # None: this forward's own log-probs are the old ones (_grpo_lm_loss)
    adv: Tensor
    ref: Tensor | None
    n_tokens: float
    dp_size: int
    mtp_scale: float
    acc: _Acc

    def stage(self, rows_of: dict[int, Tensor]) -> pipeline.StageFn:
        def run(mb: Batch, received: Tensor | None) -> mtp_modes.ForwardOutput | Tensor:
            rows, device = rows_of[id(mb)], mb.labels.device
            stats: dict[str, float] = {}
            entropy: list[Tensor] = []
            lm_loss = _grpo_lm_loss(
                self.model,
                mb,
                self.old[rows].to(device) if self.old is not None else None,
                self.adv[rows].to(device),
                self.ref[rows].to(device) if self.ref is not None else None,
                self.cfg,
                self.n_tokens,
                self.dp_size,
                stats,
                entropy,
            )
            out = mtp_modes.stage_forward(self.model, mb, self.mode, self.mtp_scale, received, lm_loss=lm_loss)
            if isinstance(out, mtp_modes.ForwardOutput):  # the last stage: the losses are here
                self.acc.add(stats, entropy, mb.loss_mask, out)
            return out

        return run


def rl_step(
    model: Any,
    optimizer: torch.optim.Optimizer,
    sequences: Sequence[RolloutSequence],
    advantages: Tensor | Sequence[float],
    old_logp: PerToken | None,
    cfg: GRPOConfig,
    *,
    mode: str,
    mtp_loss_scaling_factor: float = 0.3,
    clip_grad: float = 1.0,
    ref_model: Any | None = None,
    pad_id: int = 0,
    dp_group: Any = None,
) -> dict[str, Any]:
    """One GRPO update: ``cfg.mini_batches`` optimizer steps over this rank's ``sequences``.

    ``advantages``: one per sequence (``[b]``, e.g. ``group_advantages(...).flatten()``) or per
    token ``[b, L - 1]`` in :func:`build_batch`'s layout. ``old_logp``: the generating policy's
    log-prob of every response token (one list per sequence, or a tensor in the batch layout), or
    ``None``: recomputed here under ``no_grad`` before the first update. ``ref_model``: the frozen
    reference (required when ``cfg.kl_coef > 0``, unused otherwise). The learning rate is the
    optimizer's, as set by the caller; gradients are clipped per ``mtp_modes.clip_groups(model, mode)``
    (``clip_grad`` 0 = no clip). The model is left in train mode, with the last mini-batch's gradients.
    ``sequences`` are this rank's share; every data-parallel rank must call with the same
    ``cfg.mini_batches`` (each mini-batch is one collective optimizer step).

    Returns floats (means over the response tokens of the step, over all data-parallel ranks):
    ``policy_loss`` (the clipped surrogate, plus the KL term if on, mean over mini-batches), ``pg_loss``,
    ``entropy`` (nan if ``cfg.log_entropy`` is off), ``clip_fraction``, ``kl_old`` (k3 to the
    generating policy), ``kl_ref`` (k3 to the reference, when a reference is used), ``ratio_mean``,
    ``mtp_loss`` / ``mtp_agreement`` (lists, one per depth, on the response tokens; empty in
    ``disabled``), ``grad_norm`` (list, one per clip group, mean over mini-batches, before clipping),
    ``response_length_mean``, ``tokens`` (response tokens), ``sequences``, ``mini_batches``.
    """
    b = len(sequences)
    if b < cfg.mini_batches:
        raise ValueError(f"{b} sequences cannot make {cfg.mini_batches} mini-batches")
    if mode not in mtp_modes.MODES:
        raise ValueError(f"mode {mode!r}: use one of {', '.join(mtp_modes.MODES)}")
    if cfg.kl_coef > 0 and ref_model is None:
        raise ValueError("kl_coef > 0 needs a ref_model (frozen_reference)")
    group, dp_size = _dp(dp_group)
    device = _device(model)
    model.train()
    batch = build_batch(sequences, pad_id, sequence_multiple(model))
    width = batch.labels.shape[1]
    adv = advantages if isinstance(advantages, Tensor) else torch.tensor([float(a) for a in advantages])
    adv = adv.float().cpu()
    if adv.shape not in ((b,), (b, width)):
        raise ValueError(f"advantages have shape {tuple(adv.shape)}, expected {(b,)} or {(b, width)}")
    minis = _chunks(b, cfg.mini_batches)
    # Not given: the generating policy is the one before this step. The first mini-batch's update
    # forward runs it as it is, so its own log-probs serve (no extra pass); the later mini-batches'
    # are computed now, before the first update moves the policy.
    old = (
        _logprobs_in_chunks(model, batch, minis[1:], cfg.micro_batch_size)
        if old_logp is None
        else per_token(sequences, old_logp, width)
    )
    use_ref = ref_model is not None and cfg.kl_coef > 0
    ref = _logprobs_in_chunks(ref_model, batch, minis, cfg.micro_batch_size) if use_ref else None

    depth = int(getattr(model.config, "mtp_num_layers", None) or 0) if mode != mtp_modes.DISABLED else 0
    acc = _Acc(mtp=mtp_modes.DepthSums([0.0] * depth, [0.0] * depth, [0.0] * depth))
    norms: list[list[float]] = []
    for mini in minis:
        optimizer.zero_grad(set_to_none=True)
        micros = _micro_chunks(mini, cfg.micro_batch_size)
        moe.set_aux_loss_scale(1.0 / len(micros), device)  # MoE router loss: a mean over the micro-batches
        # The token-level mean over the whole mini-batch, all ranks: each piece divides by this.
        n_tokens = max(_reduce([float(batch.loss_mask[mini].sum())], group)[0], 1.0)
        acc.policy_losses.append(0.0)
        mbs = [_rows(batch, rows).to(device) for rows in micros]
        mini_old = None if old_logp is None and mini is minis[0] else old
        scale = mtp_loss_scaling_factor / len(micros)
        pieces = _Pieces(model, mode, cfg, mini_old, adv, ref, n_tokens, dp_size, scale, acc)
        stage = pieces.stage(dict(zip((id(mb) for mb in mbs), micros, strict=True)))
        pipeline.run(model, mbs, stage, 1.0)
        norms.append(finish_and_clip(model, mode, clip_grad, group))
        optimizer.step()

    return _summary(acc, norms, sequences, group, use_ref, cfg)


def _summary(
    acc: _Acc,
    norms: list[list[float]],
    sequences: Sequence[RolloutSequence],
    group: Any,
    use_ref: bool,
    cfg: GRPOConfig,
) -> dict[str, Any]:
    d = acc.mtp.depth
    lengths = float(sum(len(s.response) for s in sequences))
    # With pipeline parallel only the last stage has the losses: summed over the stages first.
    sums = (acc.tokens, acc.clip, acc.kl_old, acc.kl_ref, acc.ratio, acc.entropy, float(acc.micro))
    last = pipeline.sum_over_stages([*sums, sum(acc.policy_losses), acc.pg_loss, *acc.mtp.flat()])
    red = _reduce([*last[:7], lengths, float(len(sequences)), *last[7:]], group)
    tokens, micro, n_seq = max(red[0], 1.0), max(red[6], 1.0), max(red[8], 1.0)
    mtp_losses, mtp_agreement = mtp_modes.DepthSums.means(red[11:], d, micro)
    n_mini = len(acc.policy_losses)
    stats: dict[str, Any] = {
        "policy_loss": red[9] / n_mini,
        "pg_loss": red[10] / n_mini,
        "entropy": red[5] / tokens if cfg.log_entropy else float("nan"),
        "clip_fraction": red[1] / tokens,
        "kl_old": red[2] / tokens,
        "ratio_mean": red[4] / tokens,
        "mtp_loss": mtp_losses,
        "mtp_agreement": mtp_agreement,
        "grad_norm": [sum(col) / len(col) for col in zip(*norms, strict=True)] if norms else [],
        "response_length_mean": red[7] / n_seq,
        "tokens": red[0],
        "sequences": red[8],
        "mini_batches": n_mini,
    }
    if use_ref:
        stats["kl_ref"] = red[3] / tokens
    return stats
