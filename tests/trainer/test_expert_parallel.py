"""Expert parallel 2 (two gloo processes, each holding half of every MoE layer's routed experts, data
parallel 2) against the 1-process run on both ranks' micro-batches: the same losses, the same clipped
gradients and the same gradient norms, in each MTP mode.

What can go wrong that the data-parallel test does not reach: the token dispatcher must bring each
rank's tokens to the rank that holds their experts and back; an expert's gradient then already sums
both ranks' losses, so it must not be averaged like a replicated weight's (``allreduce_grads``); the
clip norm must count each rank's experts (``clip_grad_norm``); and export, checkpoints and the weight
sync must number the experts globally (``sharding.full_state_dict``, through which the gradients are
gathered here). The reference is this process's EP=1 model with torch's own ``clip_grad_norm_``.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from megatron.core import parallel_state as ps

from mtp_trainer import moe, mtp_modes
from mtp_trainer.sharding import full_state_dict

from ..gloo_ranks import free_port
from .conftest import build_model
from .parallel_models import MOE, random_batches

MAX_NORM = 0.05  # below every measured norm, so clipping scales every gradient
MODES = (mtp_modes.JOINT, mtp_modes.STANDALONE, mtp_modes.DISABLED)


def _batches() -> list[mtp_modes.Batch]:
    """Rank r's micro-batch is batch r; the one-process run accumulates both."""
    return random_batches(2)


def _step(model: torch.nn.Module, mode: str, batches: list[mtp_modes.Batch], clip: object) -> dict[str, object]:
    from mtp_trainer.train_loop import allreduce_grads

    mtp_modes.prepare(model, mode)
    model.zero_grad(set_to_none=True)
    moe.set_aux_loss_scale(1.0 / len(batches))
    losses = []
    for batch in batches:
        out = mtp_modes.forward(model, batch, mode, 0.3)
        (out.loss / len(batches)).backward()
        losses.append([float(out.lm_loss.detach()), *(float(x.detach()) for x in out.mtp_losses)])
    allreduce_grads(model)  # data parallel 2 under expert parallel; a no-op in one process
    norms = []
    for grp in mtp_modes.clip_groups(model, mode):
        with_grad = [p for p in grp if p.grad is not None]
        if with_grad:
            norms.append(float(clip(with_grad, MAX_NORM)))
    with torch.no_grad():  # gather the gradients through the weights' own placement
        for p in model.parameters():
            p.copy_(p.grad if p.grad is not None else torch.zeros_like(p))
    return {"losses": losses, "norms": norms, "grads": full_state_dict(model)}


def _worker(rank: int, port: int, tmp: str) -> None:
    import torch.distributed as dist

    from mtp_trainer import cpu_compat
    from mtp_trainer.model_provider import ModelProvider
    from mtp_trainer.sharding import shard_state_dict
    from mtp_trainer.train_loop import clip_grad_norm

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    ps.initialize_model_parallel(1, 1, expert_model_parallel_size=2)
    cpu_compat.apply()
    cpu_compat.seed_model_parallel_rng(1234)
    full = torch.load(Path(tmp) / "weights.pt")
    results: dict[str, object] = {}
    for mode in MODES:
        model = ModelProvider(MOE, expert_parallel_size=2).provide()
        experts = model.decoder.layers[0].mlp.experts.local_experts
        assert len(experts) == MOE.num_experts // 2  # half of the experts on each rank
        model.load_state_dict(shard_state_dict(model, full), strict=False)
        mine = _step(model, mode, [_batches()[rank]], clip_grad_norm)
        both: list[object] = [None, None]
        dist.all_gather_object(both, mine["losses"])
        mine["losses"] = [row for part in both for row in part]  # type: ignore[union-attr]
        results[mode] = mine
    if rank == 0:
        torch.save(results, Path(tmp) / "ep2.pt")
    ps.destroy_model_parallel()
    dist.destroy_process_group()


@pytest.fixture(scope="module")
def runs(dist_env: object, tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, dict]:
    tmp = tmp_path_factory.mktemp("ep")
    torch.save(full_state_dict(build_model(MOE, seed=21)), tmp / "weights.pt")
    one = {mode: _step(build_model(MOE, seed=21), mode, _batches(), torch.nn.utils.clip_grad_norm_) for mode in MODES}
    mp.spawn(_worker, args=(free_port(), str(tmp)), nprocs=2, join=True)
    return one, torch.load(tmp / "ep2.pt")


@pytest.mark.parametrize("mode", MODES)
def test_ep2_matches_one_process(runs: tuple[dict, dict], mode: str) -> None:
    one, two = runs[0][mode], runs[1][mode]
    for got, want in zip(two["losses"], one["losses"], strict=True):  # each rank's micro-batch, in order
        assert got == pytest.approx(want, abs=1e-5)
    assert two["norms"] == pytest.approx(one["norms"], rel=1e-5)
    assert all(n > MAX_NORM for n in one["norms"])  # clipping was active
    assert sorted(two["grads"]) == sorted(one["grads"])  # every expert under its global number
    worst = max(float((two["grads"][k] - g).abs().max()) for k, g in one["grads"].items())
    print(f"{mode}: norms {one['norms']} vs {two['norms']}, max |grad diff| {worst:.3g}")
    for k, g in one["grads"].items():
        torch.testing.assert_close(two["grads"][k], g, atol=1e-6, rtol=1e-4, msg=k)


def test_expert_parallel_with_tensor_parallel_is_refused_by_name() -> None:
    from mtp_trainer.config import ConfigError
    from mtp_trainer.model_provider import ModelProvider

    tp2 = ModelProvider(MOE, tensor_parallel_size=2, sequence_parallel=True, expert_parallel_size=2)
    with pytest.raises(ConfigError, match=r"spec.trainer.strategy.expertParallelSize 2 with tensorParallelSize 2"):
        tp2.check()
    ModelProvider(replace(MOE), expert_parallel_size=2).check()
