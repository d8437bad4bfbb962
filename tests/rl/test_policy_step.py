"""The GRPO policy step on tiny real Megatron GPTModels with MTP: mode isolation (bit for bit),
per-token log-probs against a plain GPTModel forward, response-only masks, and one step's effect."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest
import torch

from mtp_trainer import mtp_modes
from mtp_trainer.config import ModelConfig, TrainerConfig
from mtp_trainer.model_provider import ModelProvider
from mtp_trainer.rl.grpo import GRPOConfig, entropy_from_logits
from mtp_trainer.rl.policy_step import (
    RolloutSequence,
    build_batch,
    frozen_reference,
    rl_step,
    sequence_logprobs,
    vocab_parallel_entropy,
)
from mtp_trainer.train_loop import build_optimizer
from tests.gloo_ranks import run_ranks

from ..trainer.conftest import build_model, dist_env  # noqa: F401  (the session's process group)

pytestmark = pytest.mark.usefixtures("dist_env")

VOCAB = 256


def _cfg(tied: bool = False, depth: int = 1) -> ModelConfig:
    return ModelConfig(vocab_size=VOCAB, tie_word_embeddings=tied, mtp_num_layers=depth)


def _sequences(n: int = 4, seed: int = 11) -> list[RolloutSequence]:
    """Two prompts x n/2 samples, responses of different lengths (so there is padding)."""
    g = torch.Generator().manual_seed(seed)
    prompts = [torch.randint(0, VOCAB, (5,), generator=g).tolist(), torch.randint(0, VOCAB, (7,), generator=g).tolist()]
    out = []
    for k in range(n):
        length = 6 + 3 * (k % 3)
        out.append(RolloutSequence(prompts[k % 2], torch.randint(0, VOCAB, (length,), generator=g).tolist()))
    return out


ADV = torch.tensor([1.0, -0.5, -1.0, 0.5])


def _optimizer(model: torch.nn.Module, lr: float = 1e-3) -> torch.optim.Optimizer:
    cfg = TrainerConfig()
    return build_optimizer(model, replace(cfg, optim=replace(cfg.optim, learning_rate=lr)))


def _grads(model: torch.nn.Module) -> dict[str, torch.Tensor | None]:
    return {n: (p.grad.clone() if p.grad is not None else None) for n, p in model.named_parameters()}


def _params(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def test_build_batch_layout() -> None:
    seqs = [RolloutSequence([1, 2, 3], [4, 5]), RolloutSequence([6], [7, 8, 9])]
    b = build_batch(seqs, pad_id=0)
    assert b.input_ids.tolist() == [[1, 2, 3, 4], [6, 7, 8, 9]]
    assert b.labels.tolist() == [[2, 3, 4, 5], [7, 8, 9, 0]]
    # labels[i] = token i+1 counts only when token i+1 is a response token.
    assert b.loss_mask.tolist() == [[0.0, 0.0, 1.0, 1.0], [1.0, 1.0, 1.0, 0.0]]


@pytest.mark.parametrize("tied", [False, True], ids=["untied", "tied"])
def test_standalone_trunk_update_equals_the_step_without_mtp(tied: bool) -> None:
    """Standalone: the trunk's gradients and updated weights are bit-identical to the same RL step
    with the MTP forward removed, and the MTP head does get a gradient and moves."""
    with_mtp, without = build_model(_cfg(tied), seed=1), build_model(_cfg(tied), seed=1)
    for m in (with_mtp, without):
        mtp_modes.prepare(m, mtp_modes.STANDALONE)
    before = _params(with_mtp)
    assert all(torch.equal(before[n], p) for n, p in without.named_parameters())
    cfg = GRPOConfig(mini_batches=2, clip_high=0.28)
    seqs = _sequences()
    s1 = rl_step(with_mtp, _optimizer(with_mtp), seqs, ADV, None, cfg, mode=mtp_modes.STANDALONE)
    s2 = rl_step(without, _optimizer(without), seqs, ADV, None, cfg, mode=mtp_modes.DISABLED)
    g1, g2 = _grads(with_mtp), _grads(without)
    for n, p in with_mtp.named_parameters():
        if mtp_modes.is_mtp_param(n):
            assert g1[n] is not None and g1[n].abs().sum() > 0, n  # type: ignore[union-attr]
            assert g2[n] is None, n
            assert not torch.equal(p, before[n]), n
        else:
            assert g1[n] is not None and g2[n] is not None, n
            assert torch.equal(g1[n], g2[n]), n  # type: ignore[arg-type]
            assert torch.equal(p, dict(without.named_parameters())[n]), n
            assert not torch.equal(p, before[n]), n
    assert len(s1["mtp_loss"]) == 1 and s1["mtp_loss"][0] > 0 and 0 <= s1["mtp_agreement"][0] <= 1
    assert s2["mtp_loss"] == [] and len(s1["grad_norm"]) == 2 and len(s2["grad_norm"]) == 1
    assert s1["grad_norm"][0] == s2["grad_norm"][0]
    assert s1["policy_loss"] == s2["policy_loss"] and s1["entropy"] == s2["entropy"] > 0
    assert s1["mini_batches"] == 2 and s1["tokens"] == sum(len(s.response) for s in seqs)


def test_disabled_mtp_frozen_and_forward_skipped() -> None:
    model: Any = build_model(_cfg(), seed=2)
    mtp_modes.prepare(model, mtp_modes.DISABLED)
    calls: list[int] = []
    model.mtp.layers[0].register_forward_hook(lambda *a: calls.append(1))
    before = _params(model)
    opt = _optimizer(model, lr=1e-2)
    stats = rl_step(model, opt, _sequences(), ADV, None, GRPOConfig(), mode=mtp_modes.DISABLED)
    assert calls == [] and stats["mtp_loss"] == []
    for n, p in model.named_parameters():
        if mtp_modes.is_mtp_param(n):
            assert p.grad is None and torch.equal(p, before[n]), n
    assert any(not torch.equal(p, before[n]) for n, p in mtp_modes.trunk_parameters(model))


def test_sequence_logprobs_equal_plain_gpt_model_log_softmax() -> None:
    model = build_model(_cfg(), seed=3)
    plain = build_model(replace(_cfg(), mtp_num_layers=0), seed=99)
    missing, unexpected = plain.load_state_dict(model.state_dict(), strict=False)
    assert not missing and unexpected and all(mtp_modes.is_mtp_param(k) for k in unexpected)
    seqs = _sequences()
    got = sequence_logprobs(model, seqs)
    batch = build_batch(seqs)
    with torch.no_grad():
        logits = plain(batch.input_ids, batch.position_ids, batch.attention_mask)  # [b, s, V]
    expected = torch.log_softmax(logits.float(), dim=-1).gather(-1, batch.labels[..., None])[..., 0]
    assert got.shape == expected.shape
    for k, s in enumerate(seqs):
        n = len(s.prompt) + len(s.response) - 1  # every real position, prompt included
        torch.testing.assert_close(got[k, :n], expected[k, :n], rtol=0, atol=1e-5)
    # The step's entropy (vocab-parallel form, [s, b, v] in) equals the full-vocabulary one.
    ent = vocab_parallel_entropy(logits.transpose(0, 1).contiguous())
    torch.testing.assert_close(ent, entropy_from_logits(logits), rtol=1e-5, atol=1e-5)


def test_recomputed_old_logprobs_give_ratio_exactly_one() -> None:
    """One mini-batch, old log-probs recomputed by the trainer (None), or passed back in as the
    per-response-token lists vLLM would send: ratio 1, nothing clipped, KL 0, exactly."""
    seqs = _sequences()
    model = build_model(_cfg(), seed=4)
    mtp_modes.prepare(model, mtp_modes.STANDALONE)
    cfg = GRPOConfig(micro_batch_size=3)
    lp = sequence_logprobs(model, seqs)
    lists = [lp[k, len(s.prompt) - 1 : len(s.prompt) - 1 + len(s.response)].tolist() for k, s in enumerate(seqs)]
    state = _params(model)
    for old in (None, lists):
        with torch.no_grad():
            for n, p in model.named_parameters():
                p.copy_(state[n])
        st = rl_step(model, _optimizer(model), seqs, ADV, old, GRPOConfig(), mode=mtp_modes.STANDALONE)
        assert st["ratio_mean"] == 1.0 and st["clip_fraction"] == 0.0 and st["kl_old"] == 0.0
    with torch.no_grad():
        for n, p in model.named_parameters():
            p.copy_(state[n])
    st = rl_step(model, _optimizer(model), seqs, ADV, None, cfg, mode=mtp_modes.STANDALONE)
    assert st["ratio_mean"] == 1.0 and st["kl_old"] == 0.0
    # Two mini-batches: the second one is off-policy by the first update.
    st = rl_step(model, _optimizer(model), seqs, ADV, None, GRPOConfig(mini_batches=2), mode=mtp_modes.STANDALONE)
    assert st["kl_old"] > 0


def test_masked_prompt_positions_contribute_no_gradient() -> None:
    """Per-token advantages and old log-probs changed at prompt and padding positions leave every
    gradient bit-identical; the same change at one response position does not."""
    seqs = _sequences()
    model = build_model(_cfg(), seed=5)
    mtp_modes.prepare(model, mtp_modes.STANDALONE)
    batch = build_batch(seqs)
    mask = batch.loss_mask
    adv = ADV[:, None].expand_as(mask).clone()
    old = sequence_logprobs(model, seqs)
    sgd = torch.optim.SGD(model.parameters(), lr=0.0)

    def grads(a: torch.Tensor, o: torch.Tensor) -> dict[str, torch.Tensor | None]:
        rl_step(model, sgd, seqs, a, o, GRPOConfig(), mode=mtp_modes.STANDALONE, clip_grad=0.0)
        return _grads(model)

    base = grads(adv, old)
    off = mask == 0
    adv2, old2 = adv.clone(), old.clone()
    adv2[off] = 123.0
    old2[off] = old2[off] - 5.0
    changed = grads(adv2, old2)
    assert base.keys() == changed.keys()
    for n in base:
        assert base[n] is not None and torch.equal(base[n], changed[n]), n  # type: ignore[arg-type]
    # Sanity: a counted position does change the gradient.
    k, t = 0, int(mask[0].nonzero()[0])
    adv3 = adv.clone()
    adv3[k, t] = -3.0
    moved = grads(adv3, old)
    assert any(not torch.equal(base[n], moved[n]) for n in base)  # type: ignore[arg-type]


def test_positive_advantage_raises_the_sequence_logprob() -> None:
    seqs = _sequences()
    model = build_model(_cfg(), seed=6)
    mtp_modes.prepare(model, mtp_modes.STANDALONE)
    mask = build_batch(seqs).loss_mask

    def seq_logp() -> torch.Tensor:
        return (sequence_logprobs(model, seqs) * mask).sum(dim=1)

    before = seq_logp()
    rl_step(model, _optimizer(model, lr=1e-3), seqs, ADV, None, GRPOConfig(), mode=mtp_modes.STANDALONE)
    delta = seq_logp() - before
    assert delta[ADV > 0].min() > 0, delta
    assert delta[ADV < 0].max() < 0, delta


def test_frozen_reference_and_kl() -> None:
    model = build_model(_cfg(), seed=7)
    mtp_modes.prepare(model, mtp_modes.STANDALONE)
    ref = frozen_reference(model, lambda: build_model(_cfg(), seed=100))
    assert all(not p.requires_grad for p in ref.parameters()) and not ref.training
    ref_before = _params(ref)
    assert all(torch.equal(ref_before[n], p) for n, p in model.named_parameters())
    cfg = GRPOConfig(kl_coef=0.05, mini_batches=2)
    seqs = _sequences()
    # One mini-batch: the policy is still the reference when the loss is computed.
    first = rl_step(
        model,
        _optimizer(model, lr=1e-2),
        seqs,
        ADV,
        None,
        replace(cfg, mini_batches=1),
        mode="standalone",
        ref_model=ref,
    )
    assert first["kl_ref"] == 0.0
    second = rl_step(model, _optimizer(model, lr=1e-2), seqs, ADV, None, cfg, mode=mtp_modes.STANDALONE, ref_model=ref)
    assert second["kl_ref"] > first["kl_ref"]
    assert all(torch.equal(ref_before[n], p) for n, p in ref.named_parameters())
    with pytest.raises(ValueError, match="ref_model"):
        rl_step(model, _optimizer(model), seqs, ADV, None, cfg, mode="standalone")
    # Without kl_coef the reference is not used and no kl_ref is reported.
    assert "kl_ref" not in rl_step(model, _optimizer(model), seqs, ADV, None, GRPOConfig(), mode="standalone")


_DP_WORKER = """
import sys, torch
from mtp_trainer import distributed, mtp_modes
from mtp_trainer.config import ModelConfig
from mtp_trainer.model_provider import ModelProvider
from mtp_trainer.rl.grpo import GRPOConfig
from mtp_trainer.rl.policy_step import RolloutSequence, rl_step

info = distributed.init(1, 1, seed=1234)
seqs = [RolloutSequence(p, r) for p, r in torch.load(sys.argv[1])]
adv = torch.load(sys.argv[2])
torch.manual_seed(8)
model = ModelProvider(ModelConfig(vocab_size=256, mtp_num_layers=1)).provide()
mtp_modes.prepare(model, mtp_modes.STANDALONE)
half = len(seqs) // 2
mine = slice(0, half) if info.rank == 0 else slice(half, len(seqs))
sgd = torch.optim.SGD(model.parameters(), lr=0.0)
stats = rl_step(model, sgd, seqs[mine], adv[mine], None, GRPOConfig(), mode="standalone", clip_grad=0.0)
if info.rank == 0:
    grads = {n: p.grad for n, p in mtp_modes.trunk_parameters(model)}
    torch.save({"grads": grads, "stats": stats}, sys.argv[3])
distributed.shutdown()
"""


def test_data_parallel_matches_one_rank(tmp_path) -> None:
    """Two gloo ranks with half the sequences each give the trunk gradients (and the token-level
    policy loss) of one rank with all of them: the loss is normalised by the tokens of all ranks."""

    seqs = _sequences(6)
    adv = torch.tensor([1.0, -0.5, -1.0, 0.5, 0.25, -0.25])
    # One rank, all the sequences (responses of different lengths: the halves have unequal token counts).
    torch.manual_seed(8)
    model = ModelProvider(_cfg()).provide()
    mtp_modes.prepare(model, mtp_modes.STANDALONE)
    sgd = torch.optim.SGD(model.parameters(), lr=0.0)
    full = rl_step(model, sgd, seqs, adv, None, GRPOConfig(), mode="standalone", clip_grad=0.0)
    expected = {n: p.grad for n, p in mtp_modes.trunk_parameters(model)}

    torch.save([(list(s.prompt), list(s.response)) for s in seqs], tmp_path / "seqs.pt")
    torch.save(adv, tmp_path / "adv.pt")
    (tmp_path / "worker.py").write_text(_DP_WORKER)
    run_ranks(tmp_path / "worker.py", [str(tmp_path / f) for f in ("seqs.pt", "adv.pt", "out.pt")])
    got = torch.load(tmp_path / "out.pt")
    for n, g in expected.items():
        torch.testing.assert_close(got["grads"][n], g, rtol=1e-4, atol=1e-7, msg=n)
    assert got["stats"]["policy_loss"] == pytest.approx(full["policy_loss"], rel=1e-5)
    assert got["stats"]["tokens"] == full["tokens"]
    assert got["stats"]["entropy"] == pytest.approx(full["entropy"], rel=1e-5)
