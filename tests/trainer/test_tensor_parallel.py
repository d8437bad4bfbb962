"""Tensor parallel 2 (two gloo processes) against the 1-process run: the same losses, the same clipped
gradients and the same gradient norms, in each MTP mode, for the dense layout, the Gated DeltaNet hybrid
and the mixture of experts, with and without sequence parallel (MoE: with it, as Megatron requires).

The reference is this process's TP=1 model with torch's own ``clip_grad_norm_``; the two TP ranks load
shards of the same weights (``sharding.shard_state_dict``), run the trainer's own step pieces (the
mode's forward, ``allreduce_tensor_parallel_grads``, ``clip_grad_norm`` per clip group), and gather
their gradients back to full tensors.
"""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from megatron.core import parallel_state as ps

from mtp_trainer import mtp_modes
from mtp_trainer.config import ModelConfig
from mtp_trainer.families.qwen3_next import gdn_tensor_parallel_layout
from mtp_trainer.sharding import full_state_dict

from .conftest import build_model
from .parallel_models import DENSE, HYBRID, MOE, random_batches

# name -> (model, sequence parallel at TP 2). The 1-process reference is the same for both settings.
# Three spawns, not five (each is ~35 s of the suite): the dense layout without SP, the hybrid with
# SP (the Gated DeltaNet's TP split and SP's reduce-scatter, the norms' summed gradients) and the MoE
# with SP. Measured once with all five (dense and hybrid each with and without SP): all passed, the
# same max |grad diff| with and without SP (5.8e-10 dense, 1.05e-9 hybrid).
MODELS = {
    "dense": (DENSE, False),
    "hybrid-sp": (HYBRID, True),
    # Experts split over the TP ranks (expert tensor parallel = TP); Megatron's MoE needs SP with TP.
    "moe-sp": (MOE, True),
}
MAX_NORM = 0.05  # below every measured norm (the smallest, standalone MTP, is ~0.3), so clipping scales every gradient
MODES = (mtp_modes.JOINT, mtp_modes.STANDALONE, mtp_modes.DISABLED)


def _batch() -> mtp_modes.Batch:
    return random_batches(1)[0]


def _step(model: torch.nn.Module, mode: str, clip: object, m: ModelConfig) -> dict[str, object]:
    """Forward + backward + per-group clip; gradients returned as full (gathered) tensors."""
    mtp_modes.prepare(model, mode)
    model.zero_grad(set_to_none=True)
    out = mtp_modes.forward(model, _batch(), mode, 0.3)
    out.loss.backward()
    from mtp_trainer.train_loop import allreduce_tensor_parallel_grads

    allreduce_tensor_parallel_grads(model)
    norms = [
        float(clip([p for p in grp if p.grad is not None], MAX_NORM)) for grp in mtp_modes.clip_groups(model, mode)
    ]
    with torch.no_grad():  # gather the gradients through the weights' own sharding
        for p in model.parameters():
            p.copy_(p.grad if p.grad is not None else torch.zeros_like(p))
    tp = ps.get_tensor_model_parallel_world_size()
    grads = gdn_tensor_parallel_layout(full_state_dict(model), m, tp, to_ranks=False)
    return {
        "loss": float(out.loss),
        "lm": float(out.lm_loss),
        "mtp": [float(x) for x in out.mtp_losses],
        "norms": norms,
        "grads": grads,
    }


def _worker(rank: int, port: int, tmp: str, name: str) -> None:
    import torch.distributed as dist

    from mtp_trainer import cpu_compat
    from mtp_trainer.model_provider import ModelProvider
    from mtp_trainer.sharding import shard_state_dict
    from mtp_trainer.train_loop import clip_grad_norm

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    ps.initialize_model_parallel(2, 1)
    cpu_compat.apply()
    cpu_compat.seed_model_parallel_rng(1234)
    m, sequence_parallel = MODELS[name]
    full = gdn_tensor_parallel_layout(torch.load(Path(tmp) / "weights.pt"), m, 2, to_ranks=True)
    results = {}
    for mode in MODES:
        model = ModelProvider(m, tensor_parallel_size=2, sequence_parallel=sequence_parallel).provide()
        assert model.config.sequence_parallel == sequence_parallel
        model.load_state_dict(shard_state_dict(model, full), strict=False)
        results[mode] = _step(model, mode, clip_grad_norm, m)
    if rank == 0:
        torch.save(results, Path(tmp) / "tp2.pt")
    ps.destroy_model_parallel()
    dist.destroy_process_group()


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module", params=sorted(MODELS))
def runs(request: pytest.FixtureRequest, dist_env: object, tmp_path_factory: pytest.TempPathFactory) -> tuple:
    name = request.param
    m = MODELS[name][0]
    tmp = tmp_path_factory.mktemp(f"tp-{name}")
    ref_model = build_model(m, seed=21)
    torch.save(full_state_dict(ref_model), tmp / "weights.pt")
    one = {}
    for mode in MODES:
        model = build_model(m, seed=21)
        one[mode] = _step(model, mode, torch.nn.utils.clip_grad_norm_, m)
    mp.spawn(_worker, args=(_port(), str(tmp), name), nprocs=2, join=True)
    return name, one, torch.load(tmp / "tp2.pt")


@pytest.mark.parametrize("mode", MODES)
def test_tp2_matches_one_process(runs: tuple, mode: str) -> None:
    name, one, two = runs[0], runs[1][mode], runs[2][mode]
    assert two["lm"] == pytest.approx(one["lm"], abs=1e-5)
    assert two["mtp"] == pytest.approx(one["mtp"], abs=1e-5)
    assert two["norms"] == pytest.approx(one["norms"], rel=1e-5)
    assert all(n > MAX_NORM for n in one["norms"])  # clipping was active
    worst = max(float((two["grads"][k] - g).abs().max()) for k, g in one["grads"].items())
    print(f"{name} {mode}: loss {one['loss']:.6f} vs {two['loss']:.6f}, norms {one['norms']} vs {two['norms']}, "
          f"max |grad diff| {worst:.3g}")  # fmt: skip
    for k, g in one["grads"].items():
        torch.testing.assert_close(two["grads"][k], g, atol=1e-6, rtol=1e-4, msg=k)
