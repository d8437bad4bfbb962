"""GRPO math in plain PyTorch: group-normalised advantages and the clipped token-level policy loss.

- Advantages (DeepSeekMath's outcome supervision): each prompt is sampled ``n`` times; the reward of
  sample ``j`` becomes ``(r_j - mean(r)) / (std(r) + eps)`` within its group (``std`` with Bessel's
  correction, as TRL and DeepSeekMath's reference code use). A group whose rewards are all equal
  (or a group of one) gets advantage exactly 0: it carries no signal about which sample is better.
- Policy loss: PPO's clipped surrogate per token, against the log-probabilities of the policy that
  generated the samples (``old_logp``), with asymmetric bounds ``1 - clip_low`` / ``1 + clip_high``
  (DAPO's clip-higher when ``clip_high > clip_low``).
- Aggregation is token-level (DAPO): the sum over every counted (response) token of the batch divided
  by the number of counted tokens, so a long response weighs in proportion to its length rather than
  being averaged per sequence first (GRPO's original sequence-mean biases towards short answers).
- Optional KL to a frozen reference policy, with Schulman's k3 estimator
  ``exp(ref - logp) - (ref - logp) - 1`` (unbiased, always >= 0), added as ``kl_coef * mean``; off
  by default (``kl_coef = 0``), as DAPO and Dr. GRPO recommend for verifiable rewards.

Everything here takes per-token tensors ``[b, s]``; nothing depends on Megatron.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class GRPOConfig:
    """The GRPO knobs of one RL run (the trainer maps the job spec onto this).

    ``mini_batches``: the rollout batch of a step is split into this many mini-batches, each one
    optimizer step (with 1 and old log-probs recomputed by the trainer, the ratio is exactly 1).
    ``micro_batch_size``: sequences per forward/backward inside a mini-batch (0 = the whole
    mini-batch); gradient accumulation is exact because the loss is normalised by the mini-batch's
    token count. ``log_entropy``: compute the policy entropy over the full vocabulary (one extra
    pass over the logits, no gradient).
    """

    samples_per_prompt: int = 8
    clip_low: float = 0.2
    clip_high: float = 0.2
    kl_coef: float = 0.0
    mini_batches: int = 1
    micro_batch_size: int = 0
    log_entropy: bool = True
    scale_by_std: bool = True
    advantage_eps: float = 1e-6

    def __post_init__(self) -> None:
        if self.samples_per_prompt < 1:
            raise ValueError("samples_per_prompt must be >= 1")
        if not (0.0 <= self.clip_low < 1.0) or self.clip_high < 0.0:
            raise ValueError("clip_low must be in [0, 1) and clip_high >= 0")
        if self.kl_coef < 0.0:
            raise ValueError("kl_coef must be >= 0")
        if self.mini_batches < 1 or self.micro_batch_size < 0:
            raise ValueError("mini_batches must be >= 1 and micro_batch_size >= 0")


def group_advantages(rewards: Tensor, eps: float = 1e-6, scale_by_std: bool = True) -> Tensor:
    """Advantages ``[num_groups, n]`` from rewards ``[num_groups, n]`` (one row per prompt).

    ``(r - mean) / (std + eps)`` per row (``std`` unbiased), or ``r - mean`` with ``scale_by_std=False``
    (Dr. GRPO). Rows whose rewards are all equal are exactly 0.
    """
    if rewards.dim() != 2:
        raise ValueError(f"rewards must be [num_groups, samples_per_prompt], got shape {tuple(rewards.shape)}")
    r = rewards.to(torch.float32) if not rewards.is_floating_point() else rewards
    mean = r.mean(dim=1, keepdim=True)
    adv = r - mean
    if scale_by_std and r.shape[1] > 1:
        adv = adv / (r.std(dim=1, keepdim=True) + eps)
    constant = (r == r[:, :1]).all(dim=1, keepdim=True)
    return torch.where(constant, torch.zeros_like(adv), adv)


def k3_kl(logp: Tensor, other_logp: Tensor) -> Tensor:
    """Per-token k3 estimate of KL(current || other) from samples of the current policy:
    ``exp(other - logp) - (other - logp) - 1``."""
    d = other_logp - logp
    return torch.exp(d) - d - 1.0


def policy_loss(
    logp: Tensor,
    old_logp: Tensor,
    advantages: Tensor,
    mask: Tensor,
    clip_low: float = 0.2,
    clip_high: float = 0.2,
    ref_logp: Tensor | None = None,
    kl_coef: float = 0.0,
    *,
    num_tokens: float | Tensor | None = None,
) -> tuple[Tensor, dict[str, float]]:
    """The clipped token-level GRPO loss and its statistics.

    ``logp``, ``old_logp``, ``mask`` (and ``ref_logp``): ``[b, s]``, the log-probability of the sampled
    token at each position under the current / generating (/ reference) policy; only ``logp`` carries
    gradient. ``advantages``: ``[b]`` (one per sequence, broadcast over its tokens) or ``[b, s]``.

    ``loss = sum_t mask_t * (-min(ratio_t A_t, clip(ratio_t, 1 - clip_low, 1 + clip_high) A_t)
    + kl_coef * k3_t) / num_tokens`` with ``ratio_t = exp(logp_t - old_logp_t)``. ``num_tokens``
    defaults to ``mask.sum()`` (token-level mean); a caller that splits one batch into micro-batches
    or data-parallel shards passes the whole batch's count so the pieces add up to the same loss.

    Stats (means over counted tokens): ``clip_fraction`` (tokens whose gradient the clip removes:
    ``A > 0`` and ratio above ``1 + clip_high``, or ``A < 0`` and ratio below ``1 - clip_low``),
    ``approx_kl`` (k3 KL to the generating policy), ``kl_ref`` (k3 KL to the reference, when given),
    ``ratio_mean``, plus ``tokens`` (the count) and ``pg_loss`` (the surrogate term alone).
    """
    if advantages.dim() == 1:
        advantages = advantages[:, None]
    adv = advantages.to(logp.dtype).expand_as(logp)
    m = mask.to(logp.dtype)
    old = old_logp.to(logp.dtype)
    denom = m.sum().clamp(min=1.0) if num_tokens is None else num_tokens
    log_ratio = logp - old
    ratio = torch.exp(log_ratio)
    clipped_ratio = torch.clamp(ratio, 1.0 - clip_low, 1.0 + clip_high)
    per_token = -torch.minimum(ratio * adv, clipped_ratio * adv)
    pg = (per_token * m).sum() / denom
    loss = pg
    stats: dict[str, float] = {}
    with torch.no_grad():
        n = float(m.sum())

        def mean(x: Tensor) -> float:
            return float((x * m).sum()) / n if n > 0 else 0.0

        clipped = ((adv > 0) & (ratio > 1.0 + clip_high)) | ((adv < 0) & (ratio < 1.0 - clip_low))
        stats["clip_fraction"] = mean(clipped.to(m.dtype))
        stats["approx_kl"] = mean(k3_kl(logp, old))
        stats["ratio_mean"] = mean(ratio)
        stats["tokens"] = n
        stats["pg_loss"] = float(pg)
    if ref_logp is not None:
        kl = k3_kl(logp, ref_logp.to(logp.dtype))
        if kl_coef:
            loss = loss + kl_coef * (kl * m).sum() / denom
        with torch.no_grad():
            stats["kl_ref"] = mean(kl)
    return loss, stats


def entropy_from_logits(logits: Tensor) -> Tensor:
    """Per-position entropy ``-sum_v p_v log p_v`` of full-vocabulary logits ``[..., V]`` (float32)."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    return -(logp.exp() * logp).sum(dim=-1)
