"""GRPO math against values computed independently here: hand-computed advantages, and the loss and
its gradient w.r.t. the logits from a per-token loop written from the formula (float64)."""

from __future__ import annotations

import math

import pytest
import torch

from mtp_trainer.rl.grpo import GRPOConfig, entropy_from_logits, group_advantages, policy_loss


def test_advantages_hand_computed() -> None:
    rewards = torch.tensor(
        [
            [1.0, 0.0, 0.0, 0.0],  # one-hot: mean 1/4, unbiased std sqrt((9/16 + 3/16) / 3) = 1/2
            [2.0, 0.0, 1.0, 1.0],  # mean 1, unbiased std sqrt(2/3)
            [1.0, 1.0, 1.0, 1.0],  # all equal
            [0.0, 0.0, 0.0, 0.0],  # all equal
        ]
    )
    eps = 1e-6
    s = math.sqrt(2 / 3)
    expected = torch.tensor(
        [
            [0.75 / (0.5 + eps), -0.25 / (0.5 + eps), -0.25 / (0.5 + eps), -0.25 / (0.5 + eps)],
            [1 / (s + eps), -1 / (s + eps), 0.0, 0.0],
            [0.0, 0.0, 0.0, 0.0],
            [0.0, 0.0, 0.0, 0.0],
        ]
    )
    got = group_advantages(rewards, eps=eps)
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-7)
    assert torch.equal(got[2:], torch.zeros(2, 4))


def test_all_equal_groups_are_exactly_zero() -> None:
    # 0.1 * 3 / 3 != 0.1 in floating point: the mean alone would leave noise of ~1e-8 / eps.
    rewards = torch.tensor([[0.1, 0.1, 0.1], [0.7, 0.7, 0.7], [0.3, 0.3, 0.3]])
    assert torch.equal(group_advantages(rewards), torch.zeros(3, 3))
    assert torch.equal(group_advantages(torch.tensor([[5.0]])), torch.zeros(1, 1))  # a group of one
    assert torch.equal(group_advantages(torch.tensor([[1, 1]])), torch.zeros(1, 2))  # integer rewards


def test_advantages_pair_and_without_std() -> None:
    got = group_advantages(torch.tensor([[1.0, 0.0]]), eps=0.0)
    torch.testing.assert_close(got, torch.tensor([[1 / math.sqrt(2), -1 / math.sqrt(2)]]))
    got = group_advantages(torch.tensor([[3.0, 0.0, 0.0], [1.0, 1.0, 1.0]]), scale_by_std=False)
    assert torch.equal(got, torch.tensor([[2.0, -1.0, -1.0], [0.0, 0.0, 0.0]]))
    with pytest.raises(ValueError):
        group_advantages(torch.tensor([1.0, 0.0]))


def _reference_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    old: torch.Tensor,
    adv: torch.Tensor,
    mask: torch.Tensor,
    clip_low: float,
    clip_high: float,
    ref: torch.Tensor | None,
    kl_coef: float,
) -> torch.Tensor:
    """The formula token by token: -min(r A, clip(r) A) + kl_coef * k3, summed, / counted tokens."""
    total = torch.zeros((), dtype=logits.dtype)
    count = 0
    b, s, _ = logits.shape
    for i in range(b):
        for t in range(s):
            if mask[i, t] == 0:
                continue
            row = logits[i, t]
            lp = row[labels[i, t]] - torch.log(torch.exp(row).sum())
            a = float(adv[i] if adv.dim() == 1 else adv[i, t])
            r = torch.exp(lp - float(old[i, t]))
            r_clip = torch.clamp(r, 1 - clip_low, 1 + clip_high)
            term = -torch.minimum(r * a, r_clip * a)
            if ref is not None:
                d = float(ref[i, t]) - lp
                term = term + kl_coef * (torch.exp(d) - d - 1)
            total = total + term
            count += 1
    return total / count


def _logp(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return torch.log_softmax(logits, dim=-1).gather(-1, labels[..., None])[..., 0]


@pytest.mark.parametrize("kl_coef", [0.0, 0.1])
@pytest.mark.parametrize("per_token_adv", [False, True])
def test_loss_and_logit_gradient_match_a_per_token_loop(kl_coef: float, per_token_adv: bool) -> None:
    g = torch.Generator().manual_seed(0)
    b, s, v = 3, 6, 11
    logits = torch.randn(b, s, v, generator=g, dtype=torch.float64)
    labels = torch.randint(0, v, (b, s), generator=g)
    mask = torch.ones(b, s, dtype=torch.float64)
    mask[:, :2] = 0  # prompt
    mask[1, 4:] = 0  # padding
    # Old log-probs within and beyond the clip range (ratios from ~0.5 to ~2).
    old = (_logp(logits, labels) + 0.7 * torch.randn(b, s, generator=g, dtype=torch.float64)).detach()
    ref = (_logp(logits, labels) + 0.3 * torch.randn(b, s, generator=g, dtype=torch.float64)).detach()
    adv = torch.randn(b, s, generator=g, dtype=torch.float64) if per_token_adv else torch.tensor([1.3, -0.8, 0.5])
    ref_arg = ref if kl_coef else None

    x = logits.clone().requires_grad_(True)
    loss, stats = policy_loss(_logp(x, labels), old, adv, mask, 0.2, 0.28, ref_logp=ref_arg, kl_coef=kl_coef)
    loss.backward()

    y = logits.clone().requires_grad_(True)
    expected = _reference_loss(y, labels, old, adv, mask, 0.2, 0.28, ref_arg, kl_coef)
    expected.backward()

    torch.testing.assert_close(loss, expected, rtol=1e-12, atol=1e-12)
    assert x.grad is not None and y.grad is not None
    torch.testing.assert_close(x.grad, y.grad, rtol=1e-10, atol=1e-12)
    assert 0 < stats["clip_fraction"] < 1  # the draw above does exercise the clip
    assert stats["tokens"] == float(mask.sum())
    # Masked positions get no gradient at all.
    assert torch.equal(x.grad[:, :2], torch.zeros(b, 2, v, dtype=torch.float64))
    assert torch.equal(x.grad[1, 4:], torch.zeros(2, v, dtype=torch.float64))


def test_clipping_hand_checked() -> None:
    """Ratios 1.5 / 0.5 with advantages +1 / -1, eps 0.2, one sequence of 4 counted tokens:
    - r=1.5, A=+1: min(1.5, 1.2) = 1.2 -> clipped, zero gradient;
    - r=1.5, A=-1: min(-1.5, -1.2) = -1.5 -> unclipped, d(-rA)/dlogits = 1.5 (onehot - p) / 4;
    - r=0.5, A=-1: min(-0.5, -0.8) = -0.8 -> clipped, zero gradient;
    - r=0.5, A=+1: min(0.5, 0.8) = 0.5 -> unclipped, gradient -0.5 (onehot - p) / 4.
    loss = -(1.2 - 1.5 - 0.8 + 0.5) / 4 = 0.15."""
    logits = torch.tensor(
        [[[0.3, -1.0, 2.0], [1.0, 0.0, -0.5], [0.2, 0.2, 0.9], [-1.0, 1.5, 0.0]]], dtype=torch.float64
    )
    labels = torch.tensor([[2, 0, 1, 1]])
    ratios = torch.tensor([[1.5, 1.5, 0.5, 0.5]], dtype=torch.float64)
    adv = torch.tensor([[1.0, -1.0, -1.0, 1.0]], dtype=torch.float64)
    mask = torch.ones(1, 4, dtype=torch.float64)
    old = _logp(logits, labels) - torch.log(ratios)

    x = logits.clone().requires_grad_(True)
    loss, stats = policy_loss(_logp(x, labels), old, adv, mask, clip_low=0.2, clip_high=0.2)
    loss.backward()
    assert x.grad is not None
    torch.testing.assert_close(loss, torch.tensor(0.15, dtype=torch.float64), rtol=1e-12, atol=1e-12)

    p = torch.softmax(logits, dim=-1)[0]
    onehot = torch.nn.functional.one_hot(labels[0], 3).to(torch.float64)
    expected = torch.zeros(4, 3, dtype=torch.float64)
    expected[1] = 1.5 * (onehot[1] - p[1]) / 4
    expected[3] = -0.5 * (onehot[3] - p[3]) / 4
    torch.testing.assert_close(x.grad[0], expected, rtol=1e-12, atol=1e-14)
    assert torch.equal(x.grad[0, 0], torch.zeros(3, dtype=torch.float64))
    assert torch.equal(x.grad[0, 2], torch.zeros(3, dtype=torch.float64))
    assert stats["clip_fraction"] == 0.5
    assert stats["ratio_mean"] == pytest.approx(1.0)
    # k3 KL to the old policy: mean of exp(-log r) + log r - 1 over the four tokens.
    k3 = [1 / r + math.log(r) - 1 for r in (1.5, 1.5, 0.5, 0.5)]
    assert stats["approx_kl"] == pytest.approx(sum(k3) / 4)


def test_on_policy_ratio_one_and_kl() -> None:
    g = torch.Generator().manual_seed(1)
    logp = -torch.rand(2, 5, generator=g, dtype=torch.float64)
    mask = torch.ones(2, 5, dtype=torch.float64)
    adv = torch.tensor([2.0, -1.0], dtype=torch.float64)
    loss, stats = policy_loss(logp, logp, adv, mask)
    assert loss.item() == pytest.approx(-(2.0 * 5 - 1.0 * 5) / 10)
    assert stats["ratio_mean"] == 1.0 and stats["clip_fraction"] == 0.0 and stats["approx_kl"] == 0.0
    # KL to a reference: k3 with ref - logp = 0.1 everywhere; off by default (kl_coef 0).
    ref = logp + 0.1
    loss_no_kl, st = policy_loss(logp, logp, adv, mask, ref_logp=ref)
    assert loss_no_kl.item() == loss.item()
    assert st["kl_ref"] == pytest.approx(math.exp(0.1) - 0.1 - 1)
    loss_kl, _ = policy_loss(logp, logp, adv, mask, ref_logp=ref, kl_coef=0.5)
    assert loss_kl.item() == pytest.approx(loss.item() + 0.5 * (math.exp(0.1) - 0.1 - 1))


def test_token_level_aggregation_splits_exactly() -> None:
    """DAPO token-level mean: a long response weighs by its length, and two halves with the whole
    batch's token count add up to the whole batch's loss."""
    logp = torch.tensor([[-1.0, -1.0, -1.0, -1.0], [-1.0, 0.0, 0.0, 0.0]], dtype=torch.float64)
    mask = torch.tensor([[1.0, 1.0, 1.0, 1.0], [1.0, 0.0, 0.0, 0.0]], dtype=torch.float64)
    adv = torch.tensor([1.0, -1.0], dtype=torch.float64)
    loss, _ = policy_loss(logp, logp, adv, mask)
    assert loss.item() == pytest.approx(-(4 * 1.0 - 1.0) / 5)  # not the per-sequence mean, -(1 - 1) / 2
    halves = [
        policy_loss(logp[i : i + 1], logp[i : i + 1], adv[i : i + 1], mask[i : i + 1], num_tokens=5)[0] for i in (0, 1)
    ]
    assert (halves[0] + halves[1]).item() == pytest.approx(loss.item())


def test_entropy_matches_a_loop() -> None:
    g = torch.Generator().manual_seed(2)
    logits = torch.randn(2, 3, 7, generator=g)
    got = entropy_from_logits(logits)
    for i in range(2):
        for t in range(3):
            z = [math.exp(float(x)) for x in logits[i, t]]
            p = [e / sum(z) for e in z]
            assert got[i, t].item() == pytest.approx(-sum(q * math.log(q) for q in p), rel=1e-5)


def test_config_validation() -> None:
    assert GRPOConfig().kl_coef == 0.0
    with pytest.raises(ValueError):
        GRPOConfig(mini_batches=0)
    with pytest.raises(ValueError):
        GRPOConfig(clip_low=1.0)
