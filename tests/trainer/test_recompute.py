"""``spec.trainer.strategy.recompute``: Megatron's activation recompute, on CPU (cpu_compat workaround 8).

The reference is the same model without recompute: recomputing the forward in backward must give the
same losses and bit-identical gradients, and the recompute must actually have run."""

from __future__ import annotations

import pytest
import torch
from megatron.core import tensor_parallel

from mtp_trainer import mtp_modes
from mtp_trainer.config import ModelConfig
from mtp_trainer.data import causal_batch
from mtp_trainer.model_provider import ModelProvider

M = ModelConfig(hidden_size=64, num_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                vocab_size=256, mtp_num_layers=1)  # fmt: skip


def _grads(recompute: str, mode: str) -> tuple[float, dict[str, torch.Tensor]]:
    torch.manual_seed(0)
    model = ModelProvider(M, recompute=recompute).provide().train()
    mtp_modes.prepare(model, mode)
    ids = torch.randint(2, M.vocab_size, (2, 33), generator=torch.Generator().manual_seed(0))
    out = mtp_modes.forward(model, causal_batch(ids, torch.ones(2, 32)), mode, 0.3)
    out.loss.backward()
    return float(out.loss), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("recompute", ["full", "selective"])
@pytest.mark.parametrize("mode", [mtp_modes.JOINT, mtp_modes.STANDALONE])
def test_recompute_gives_the_same_gradients(
    dist_env: object, monkeypatch: pytest.MonkeyPatch, recompute: str, mode: str
) -> None:
    loss, ref = _grads("none", mode)
    calls = []
    real = tensor_parallel.checkpoint

    def counting(*args: object, **kwargs: object) -> object:
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(tensor_parallel, "checkpoint", counting)
    loss_rc, got = _grads(recompute, mode)
    assert calls, "no layer was recomputed"
    assert loss_rc == loss
    assert got.keys() == ref.keys()
    for k in ref:
        torch.testing.assert_close(got[k], ref[k], atol=0, rtol=0, msg=k)
