"""The three MTP training modes: one forward over Megatron's own modules, with the cuts per mode.

Design note: docs/mtp-training-modes.md. In short:

- ``joint``: the MTP loss flows everywhere; total = lm + (factor / D) * sum_d mtp_d, which is what
  Megatron's ``MTPLossAutoScaler`` adds in ``GPTModel._postprocess`` (a test checks the gradients
  against ``GPTModel.forward`` itself).
- ``standalone``: MTP learns from its own cross-entropy and no gradient reaches the trunk. Three
  cuts (Megatron 0.19's ``mtp_detach_heads``): (1) the trunk hidden state entering depth 1,
  (2) the embedding output that MTP reads (the shifted tokens), (3) the output weight used for
  the MTP logits -- tied *or untied* (ROLL cuts it only when tied, and leaks into ``lm_head``).
- ``disabled``: the MTP parameters are frozen (kept, checkpointed, exported) and the MTP forward
  is skipped, so it costs nothing.

The forward is composed from the GPTModel's own submodules (``_preprocess`` for embedding + RoPE,
``decoder``, ``mtp.layers[d]``, ``output_layer``, ``compute_language_model_loss``) rather than
calling ``GPTModel.forward``, because the cuts sit between those modules and because we need the
per-depth logits for the top-1 agreement metric.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import torch
from megatron.core.models.gpt import GPTModel
from megatron.core.tensor_parallel import gather_from_tensor_model_parallel_region
from torch import Tensor, nn

from mtp_api.types import MTPTrainingMode

JOINT = MTPTrainingMode.JOINT.value
STANDALONE = MTPTrainingMode.STANDALONE.value
DISABLED = MTPTrainingMode.DISABLED.value
MODES = (DISABLED, STANDALONE, JOINT)


@dataclass
class Batch:
    """One micro-batch. ``labels[i]`` is token ``i+1``; ``loss_mask[i]`` says whether it counts.
    ``attention_mask`` is Megatron's boolean mask (True = hidden), [b, 1, s, s]."""

    input_ids: Tensor
    position_ids: Tensor
    labels: Tensor
    loss_mask: Tensor
    attention_mask: Tensor

    def to(self, device: torch.device) -> Batch:
        return Batch(*(getattr(self, f).to(device) for f in self.__dataclass_fields__))


@dataclass
class ForwardOutput:
    """Losses (scalar tensors) and top-1 counts; ``loss`` is what backward runs on."""

    loss: Tensor
    lm_loss: Tensor
    mtp_losses: list[Tensor] = field(default_factory=list)
    lm_correct: float = 0.0
    lm_tokens: float = 0.0
    mtp_correct: list[float] = field(default_factory=list)
    mtp_tokens: list[float] = field(default_factory=list)
    mtp_logits: list[Tensor] = field(default_factory=list)
    lm_logits: Tensor | None = None


@dataclass
class DepthSums:
    """Per-depth MTP loss, top-1 hits and scored tokens, summed over micro-batches.

    Why one class: the SFT loop and the RL step both sum these and all-reduce them over the
    data-parallel group as one flat vector; ``flat`` and ``means`` are the two ends of that."""

    loss: list[float] = field(default_factory=list)
    correct: list[float] = field(default_factory=list)
    tokens: list[float] = field(default_factory=list)

    @property
    def depth(self) -> int:
        return len(self.loss)

    def add(self, out: ForwardOutput) -> None:
        d = len(out.mtp_losses)
        if d and not self.loss:
            self.loss, self.correct, self.tokens = [0.0] * d, [0.0] * d, [0.0] * d
        for i in range(d):
            self.loss[i] += float(out.mtp_losses[i].detach())
            self.correct[i] += out.mtp_correct[i]
            self.tokens[i] += out.mtp_tokens[i]

    def flat(self) -> list[float]:
        return [*self.loss, *self.correct, *self.tokens]

    @staticmethod
    def means(reduced: Sequence[float], depth: int, micro_batches: float) -> tuple[list[float], list[float]]:
        """(mean loss, agreement) per depth from the reduced ``flat`` vector (``reduced`` starts there)."""
        d = depth
        losses = [float(reduced[i]) / micro_batches for i in range(d)]
        agreement = [float(reduced[d + i]) / max(float(reduced[2 * d + i]), 1.0) for i in range(d)]
        return losses, agreement


def is_mtp_param(name: str) -> bool:
    return name.startswith("mtp.") or ".mtp." in name


def mtp_parameters(model: nn.Module) -> Iterator[tuple[str, nn.Parameter]]:
    return ((n, p) for n, p in model.named_parameters() if is_mtp_param(n))


def trunk_parameters(model: nn.Module) -> Iterator[tuple[str, nn.Parameter]]:
    return ((n, p) for n, p in model.named_parameters() if not is_mtp_param(n))


def prepare(model: nn.Module, mode: str) -> None:
    """Freeze the MTP weights in ``disabled`` mode (they stay in the state dict)."""
    if mode not in MODES:
        raise ValueError(f"spec.trainer.mtp.trainingMode {mode!r}: use one of {', '.join(MODES)}")
    for _, p in mtp_parameters(model):
        p.requires_grad_(mode != DISABLED)


def clip_groups(model: nn.Module, mode: str) -> list[list[nn.Parameter]]:
    """Gradient-norm clipping groups: in ``standalone`` the MTP head is clipped on its own, so
    its (often larger) gradient norm never rescales the trunk's update, and vice versa."""
    trunk = [p for _, p in trunk_parameters(model) if p.requires_grad]
    mtp = [p for _, p in mtp_parameters(model) if p.requires_grad]
    if mode == STANDALONE:
        return [trunk, mtp]
    return [trunk + mtp]


def _roll_left(x: Tensor, k: int) -> Tensor:
    """Shift along the sequence by ``k`` with zero fill (Megatron's ``roll_tensor``, CP=1)."""
    out = torch.zeros_like(x)
    if k < x.shape[-1]:
        out[..., : x.shape[-1] - k] = x[..., k:]
    return out


def _masked_mean(per_token: Tensor, mask: Tensor) -> Tensor:
    return (per_token * mask).sum() / mask.sum().clamp(min=1.0)


@torch.no_grad()
def _top1(logits: Tensor, labels: Tensor, mask: Tensor) -> tuple[float, float]:
    """Correct / counted top-1 predictions; logits [s, b, v/tp] are gathered over TP first."""
    full = gather_from_tensor_model_parallel_region(logits)
    pred = full.argmax(dim=-1).transpose(0, 1)
    return float(((pred == labels).float() * mask).sum()), float(mask.sum())


def output_weight(model: GPTModel) -> Tensor:
    if model.share_embeddings_and_output_weights:
        return model.shared_embedding_or_output_weight()
    return model.output_layer.weight


LMLoss = Callable[[Tensor], Tensor]
"""The trunk's loss from its logits ``[s, b, v/tp]`` (vocab-parallel, with gradient) -> scalar.
Megatron's vocab-parallel cross-entropy rewrites float32 logits in place: read them first."""


def forward(
    model: GPTModel,
    batch: Batch,
    mode: str,
    loss_scaling_factor: float,
    keep_logits: bool = False,
    lm_loss: LMLoss | None = None,
) -> ForwardOutput:
    """One forward of trunk (+ MTP unless disabled); returns the losses for ``mode``.

    ``lm_loss`` replaces the trunk's loss (default: the masked-mean next-token cross-entropy); the
    RL policy step plugs its GRPO loss in here. The MTP losses, the cuts and the total are the same
    whatever the trunk's loss is: ``loss = lm_loss + (factor / D) * sum_d mtp_d`` (MTP skipped in
    ``disabled``), and in ``standalone`` no MTP gradient reaches the trunk. The whole model must be
    on this rank; a pipeline stage runs :func:`stage_forward` (``pipeline.py``)."""
    out = stage_forward(model, batch, mode, loss_scaling_factor, None, keep_logits, lm_loss)
    if not isinstance(out, ForwardOutput):
        raise RuntimeError("mtp_modes.forward needs the whole model; with pipeline parallel use pipeline.run")
    return out


def stage_forward(
    model: GPTModel,
    batch: Batch,
    mode: str,
    loss_scaling_factor: float,
    input_tensor: Tensor | None = None,
    keep_logits: bool = False,
    lm_loss: LMLoss | None = None,
) -> ForwardOutput | Tensor:
    """This pipeline stage's part of :func:`forward`: the first stage embeds the tokens, a later one
    starts from ``input_tensor`` (the previous stage's hidden states); every stage runs its layers;
    the last one (``post_process``) adds the output layer, the trunk loss and the MTP block and
    returns the :class:`ForwardOutput`, any other returns its hidden states for the next stage."""
    if input_tensor is not None:
        model.set_input_tensor(input_tensor)  # read by _preprocess (RoPE length) and the decoder
    decoder_input, rotary_pos_emb = model._preprocess(input_ids=batch.input_ids, position_ids=batch.position_ids)[:2]
    hidden = model.decoder(
        hidden_states=decoder_input, attention_mask=batch.attention_mask, rotary_pos_emb=rotary_pos_emb
    )
    if not model.post_process:
        return hidden
    return _head(model, batch, hidden, rotary_pos_emb, mode, loss_scaling_factor, keep_logits, lm_loss)


def _head(
    model: GPTModel,
    batch: Batch,
    hidden: Tensor,
    rotary_pos_emb: Tensor | None,
    mode: str,
    loss_scaling_factor: float,
    keep_logits: bool,
    lm_loss: LMLoss | None,
) -> ForwardOutput:
    """Output layer, trunk loss and the MTP depths with the cuts of ``mode`` (the last stage's part)."""
    mask = batch.loss_mask.float()
    tied_weight = model.shared_embedding_or_output_weight() if model.share_embeddings_and_output_weights else None
    logits, _ = model.output_layer(hidden, weight=tied_weight)
    # Read logits before the loss: Megatron's vocab-parallel cross-entropy rewrites them in place.
    lm_correct, lm_tokens = _top1(logits, batch.labels, mask)
    kept = logits.detach().clone() if keep_logits else None
    if lm_loss is None:
        lm = _masked_mean(model.compute_language_model_loss(batch.labels, logits), mask)
    else:
        lm = lm_loss(logits)
    out = ForwardOutput(loss=lm, lm_loss=lm, lm_correct=lm_correct, lm_tokens=lm_tokens, lm_logits=kept)

    mtp_block = getattr(model, "mtp", None)
    if mode == DISABLED or mtp_block is None:
        return out

    standalone = mode == STANDALONE
    embed: Callable[..., Tensor] = model.embedding
    weight: Tensor | None = tied_weight
    h = hidden
    if standalone:
        h = hidden.detach()  # cut 1: trunk hidden state into depth 1
        if torch.is_grad_enabled():
            # A leaf that wants a gradient (it goes nowhere): with activation recompute the MTP layer runs
            # inside Megatron's CheckpointFunction, whose output needs an input that requires grad, or
            # the MTP weights would silently get none.
            h.requires_grad_()

        def embed(input_ids: Tensor, position_ids: Tensor) -> Tensor:  # cut 2: shifted-token embedding
            return model.embedding(input_ids=input_ids, position_ids=position_ids).detach()

        weight = output_weight(model).detach()  # cut 3: output weight, tied or untied

    depth_scale = loss_scaling_factor / len(mtp_block.layers)
    ids, pos = batch.input_ids, batch.position_ids
    total = lm
    for d, layer in enumerate(mtp_block.layers, start=1):
        h, ids, pos = layer(
            input_ids=ids,
            position_ids=pos,
            hidden_states=h,
            attention_mask=batch.attention_mask,
            rotary_pos_emb=rotary_pos_emb,
            embedding=embed,
        )
        mtp_logits, _ = model.output_layer(h, weight=weight)
        labels_d, mask_d = _roll_left(batch.labels, d), _roll_left(mask, d)
        c, n = _top1(mtp_logits, labels_d, mask_d)
        out.mtp_correct.append(c)
        out.mtp_tokens.append(n)
        if keep_logits:
            out.mtp_logits.append(mtp_logits.detach().clone())
        loss_d = _masked_mean(model.compute_language_model_loss(labels_d, mtp_logits), mask_d)
        total = total + depth_scale * loss_d
        out.mtp_losses.append(loss_d)
    out.loss = total
    return out
