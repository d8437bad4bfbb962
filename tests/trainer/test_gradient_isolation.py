"""Gradient-isolation proofs for the three MTP modes, with tied and untied output weights.

Every comparison is bit for bit (``torch.equal``), on the real Megatron GPTModel.
"""

from __future__ import annotations

import pytest
import torch
from megatron.core.transformer.multi_token_prediction import MTPLossAutoScaler

from mtp_trainer import mtp_modes
from mtp_trainer.config import ModelConfig
from mtp_trainer.data import causal_batch

from .conftest import build_model

SCALE = 0.3


def _cfg(tied: bool, depth: int = 1) -> ModelConfig:
    return ModelConfig(vocab_size=256, tie_word_embeddings=tied, mtp_num_layers=depth)


def _batch(vocab: int = 256, b: int = 2, s: int = 24) -> mtp_modes.Batch:
    g = torch.Generator().manual_seed(7)
    tokens = torch.randint(0, vocab, (b, s + 1), generator=g)
    mask = torch.ones(b, s)
    mask[:, :5] = 0  # a "prompt" that does not count
    return causal_batch(tokens, mask)


def _grads(model: torch.nn.Module, mode: str, batch: mtp_modes.Batch) -> dict[str, torch.Tensor | None]:
    model.zero_grad(set_to_none=True)
    mtp_modes.prepare(model, mode)
    out = mtp_modes.forward(model, batch, mode, SCALE)
    out.loss.backward()
    return {n: (p.grad.clone() if p.grad is not None else None) for n, p in model.named_parameters()}


def _lm_only_grads(model: torch.nn.Module, batch: mtp_modes.Batch) -> dict[str, torch.Tensor | None]:
    """A model trained without MTP loss: the same weights, backward on the lm loss only."""
    model.zero_grad(set_to_none=True)
    mtp_modes.prepare(model, mtp_modes.JOINT)
    out = mtp_modes.forward(model, batch, mtp_modes.DISABLED, SCALE)
    out.lm_loss.backward()
    return {n: (p.grad.clone() if p.grad is not None else None) for n, p in model.named_parameters()}


def _trunk(g: dict[str, torch.Tensor | None]) -> dict[str, torch.Tensor | None]:
    return {n: v for n, v in g.items() if not mtp_modes.is_mtp_param(n)}


def _mtp(g: dict[str, torch.Tensor | None]) -> dict[str, torch.Tensor | None]:
    return {n: v for n, v in g.items() if mtp_modes.is_mtp_param(n)}


def _assert_equal(a: dict[str, torch.Tensor | None], b: dict[str, torch.Tensor | None]) -> None:
    assert a.keys() == b.keys() and a
    for n in a:
        x, y = a[n], b[n]
        assert x is not None and y is not None, n
        assert torch.equal(x, y), f"{n}: max diff {(x - y).abs().max().item()}"


@pytest.mark.parametrize("tied", [False, True], ids=["untied", "tied"])
@pytest.mark.parametrize("depth", [1, 2])
def test_standalone_trunk_equals_no_mtp_and_mtp_equals_joint(dist_env, tied: bool, depth: int) -> None:
    model = build_model(_cfg(tied, depth), seed=1)
    batch = _batch()
    lm_only = _lm_only_grads(model, batch)
    standalone = _grads(model, mtp_modes.STANDALONE, batch)
    joint = _grads(model, mtp_modes.JOINT, batch)
    _assert_equal(_trunk(standalone), _trunk(lm_only))
    _assert_equal(_mtp(standalone), _mtp(joint))
    assert all(v is not None and v.abs().sum() > 0 for v in _mtp(standalone).values())


@pytest.mark.parametrize("tied", [False, True], ids=["untied", "tied"])
def test_joint_changes_trunk_gradients(dist_env, tied: bool) -> None:
    model = build_model(_cfg(tied), seed=2)
    batch = _batch()
    lm_only = _trunk(_lm_only_grads(model, batch))
    joint = _trunk(_grads(model, mtp_modes.JOINT, batch))
    changed = [n for n in lm_only if not torch.equal(lm_only[n], joint[n])]  # type: ignore[arg-type]
    # The four routes: decoder output (every layer), final norm, embedding, output weight.
    assert "decoder.final_layernorm.weight" in changed
    assert "embedding.word_embeddings.weight" in changed
    assert any(n.startswith("decoder.layers.0.") for n in changed)
    if not tied:
        assert "output_layer.weight" in changed


@pytest.mark.parametrize("tied", [False, True], ids=["untied", "tied"])
def test_disabled_mtp_gets_no_gradient_and_does_not_change(dist_env, tied: bool) -> None:
    model = build_model(_cfg(tied), seed=3)
    batch = _batch()
    lm_only = _lm_only_grads(model, batch)
    before = {n: p.detach().clone() for n, p in mtp_modes.mtp_parameters(model)}
    disabled = _grads(model, mtp_modes.DISABLED, batch)
    assert all(v is None for v in _mtp(disabled).values())
    _assert_equal(_trunk(disabled), _trunk(lm_only))
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2, weight_decay=0.1)
    opt.step()
    for n, p in mtp_modes.mtp_parameters(model):
        assert torch.equal(p, before[n]), n


def test_disabled_skips_mtp_forward(dist_env) -> None:
    model = build_model(_cfg(False), seed=4)
    calls = []
    model.mtp.layers[0].register_forward_hook(lambda *a: calls.append(1))
    mtp_modes.prepare(model, mtp_modes.DISABLED)
    out = mtp_modes.forward(model, _batch(), mtp_modes.DISABLED, SCALE)
    assert calls == [] and out.mtp_losses == []


def test_standalone_has_separate_clip_group(dist_env) -> None:
    model = build_model(_cfg(False), seed=5)
    groups = mtp_modes.clip_groups(model, mtp_modes.STANDALONE)
    mtp_ids = {id(p) for _, p in mtp_modes.mtp_parameters(model)}
    assert len(groups) == 2 and {id(p) for p in groups[1]} == mtp_ids
    assert not mtp_ids & {id(p) for p in groups[0]}
    assert len(mtp_modes.clip_groups(model, mtp_modes.JOINT)) == 1


@pytest.mark.parametrize("tied", [False, True], ids=["untied", "tied"])
def test_joint_matches_megatron_gpt_model_forward(dist_env, tied: bool) -> None:
    """Our composed joint forward gives the same gradients as GPTModel.forward + MTPLossAutoScaler."""
    model = build_model(_cfg(tied), seed=6, scale=SCALE)
    batch = _batch()
    ours = _grads(model, mtp_modes.JOINT, batch)
    model.zero_grad(set_to_none=True)
    MTPLossAutoScaler.set_loss_scale(torch.tensor(1.0))
    per_token = model(
        batch.input_ids,
        batch.position_ids,
        batch.attention_mask,
        labels=batch.labels,
        loss_mask=batch.loss_mask.float(),
    )
    mask = batch.loss_mask.float()
    ((per_token * mask).sum() / mask.sum()).backward()
    for n, p in model.named_parameters():
        ref = ours[n]
        assert ref is not None and p.grad is not None, n
        torch.testing.assert_close(p.grad, ref, rtol=1e-5, atol=1e-7, msg=n)
