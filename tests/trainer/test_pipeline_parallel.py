"""Pipeline parallel 2 (two gloo processes, one stage each) against the 1-process run: the same
losses, the same clipped gradients and the same gradient norms, in each MTP mode, with two
micro-batches of gradient accumulation.

Two layouts: a mixture of experts with tied embeddings (the last stage's embedding copy is both the
MTP block's embedding and the output weight, so its gradient must be summed with the first stage's;
routed and shared experts and the router on both stages), and the Gated DeltaNet hybrid with untied embeddings (linear and full attention layers on both
stages, so the stage's layer slice must pick the global layer's type; the MTP block's embedding copy
is the only shared weight).

The reference is this process's PP=1 model with torch's own ``clip_grad_norm_``. The two stages load
their parts of the same weights (``sharding.shard_state_dict``), run the trainer's own pieces
(``pipeline.run`` over ``mtp_modes.stage_forward``, ``pipeline.allreduce_embedding_grads``,
``clip_grad_norm`` per clip group), and gather their gradients back into one-stage names
(``sharding.full_state_dict``).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from megatron.core import parallel_state as ps

from mtp_trainer import mtp_modes, pipeline
from mtp_trainer.config import FULL_ATTENTION, LINEAR_ATTENTION
from mtp_trainer.sharding import full_state_dict

from ..gloo_ranks import free_port
from .conftest import build_model
from .parallel_models import HYBRID, MOE, random_batches

MOE_TIED = replace(MOE, tie_word_embeddings=True)
# Stage 0 builds two linear layers, stage 1 a linear and the full one: a stage that built the first
# layers' types again would build two linear layers there.
HYBRID_4 = replace(
    HYBRID, num_layers=4, layer_types=(LINEAR_ATTENTION, LINEAR_ATTENTION, LINEAR_ATTENTION, FULL_ATTENTION)
)
MODELS = {"moe-tied": MOE_TIED, "hybrid": HYBRID_4}
MAX_NORM = 0.05  # below every measured norm, so clipping scales every gradient
MODES = (mtp_modes.JOINT, mtp_modes.STANDALONE, mtp_modes.DISABLED)


def _batches() -> list[mtp_modes.Batch]:
    return random_batches(2)


def _step(model: torch.nn.Module, mode: str, clip: object) -> dict[str, object]:
    """Two micro-batches forward + backward, the embedding-grad sum, per-group clip; gradients
    returned as full one-stage tensors, losses as the last stage's (summed over stages)."""
    mtp_modes.prepare(model, mode)
    model.zero_grad(set_to_none=True)

    def stage(batch: mtp_modes.Batch, received: torch.Tensor | None) -> mtp_modes.ForwardOutput | torch.Tensor:
        return mtp_modes.stage_forward(model, batch, mode, 0.3, received)

    outs = pipeline.run(model, _batches(), stage, 0.5)
    pipeline.allreduce_embedding_grads(model)
    depth = 0 if mode == mtp_modes.DISABLED else 1
    local = [0.0] * (2 + depth)
    for out in outs:
        local[0] += float(out.loss.detach()) / 2
        local[1] += float(out.lm_loss) / 2
        for d, x in enumerate(out.mtp_losses):
            local[2 + d] += float(x) / 2
    losses = pipeline.sum_over_stages(local)
    norms = []
    for grp in mtp_modes.clip_groups(model, mode):
        with_grad = [p for p in grp if p.grad is not None]
        if with_grad or pipeline.size() > 1:
            norms.append(float(clip(with_grad, MAX_NORM)))
    with torch.no_grad():  # gather the gradients through the weights' own placement
        for p in model.parameters():
            p.copy_(p.grad if p.grad is not None else torch.zeros_like(p))
    return {"loss": losses[0], "lm": losses[1], "mtp": losses[2:], "norms": norms, "grads": full_state_dict(model)}


def _worker(rank: int, port: int, tmp: str, name: str) -> None:
    import torch.distributed as dist

    from mtp_trainer import cpu_compat
    from mtp_trainer.model_provider import ModelProvider
    from mtp_trainer.sharding import shard_state_dict
    from mtp_trainer.train_loop import clip_grad_norm

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    ps.initialize_model_parallel(1, 2)
    cpu_compat.apply()
    cpu_compat.seed_model_parallel_rng(1234)
    m = MODELS[name]
    full = torch.load(Path(tmp) / "weights.pt")
    results: dict[str, object] = {}
    for mode in MODES:
        model = ModelProvider(m, pipeline_parallel_size=2).provide()
        assert len(model.decoder.layers) == m.num_layers // 2
        assert (getattr(model, "mtp", None) is not None) == (rank == 1)  # the MTP block on the last stage
        model.load_state_dict(shard_state_dict(model, full), strict=False)
        results[mode] = _step(model, mode, clip_grad_norm)
    results["layer_kinds"] = [type(layer.self_attention).__name__ for layer in model.decoder.layers]
    gathered: list[object] = [None, None]
    dist.all_gather_object(gathered, results["layer_kinds"])
    results["layer_kinds"] = gathered
    if rank == 0:
        torch.save(results, Path(tmp) / "pp2.pt")
    ps.destroy_model_parallel()
    dist.destroy_process_group()


@pytest.fixture(scope="module", params=sorted(MODELS))
def runs(request: pytest.FixtureRequest, dist_env: object, tmp_path_factory: pytest.TempPathFactory) -> tuple:
    name = request.param
    m = MODELS[name]
    tmp = tmp_path_factory.mktemp(f"pp-{name}")
    torch.save(full_state_dict(build_model(m, seed=21)), tmp / "weights.pt")
    one = {mode: _step(build_model(m, seed=21), mode, torch.nn.utils.clip_grad_norm_) for mode in MODES}
    mp.spawn(_worker, args=(free_port(), str(tmp), name), nprocs=2, join=True)
    return name, one, torch.load(tmp / "pp2.pt")


@pytest.mark.parametrize("mode", MODES)
def test_pp2_matches_one_process(runs: tuple, mode: str) -> None:
    name, one, two = runs[0], runs[1][mode], runs[2][mode]
    assert two["lm"] == pytest.approx(one["lm"], abs=1e-5)
    assert two["mtp"] == pytest.approx(one["mtp"], abs=1e-5)
    assert len(one["mtp"]) == (0 if mode == mtp_modes.DISABLED else 1)
    assert two["norms"] == pytest.approx(one["norms"], rel=1e-5)
    assert all(n > MAX_NORM for n in one["norms"])  # clipping was active
    assert sorted(two["grads"]) == sorted(one["grads"])  # the one-stage names, nothing extra or lost
    worst = max(float((two["grads"][k] - g).abs().max()) for k, g in one["grads"].items())
    print(f"{name} {mode}: loss {one['loss']:.6f} vs {two['loss']:.6f}, norms {one['norms']} vs {two['norms']}, "
          f"max |grad diff| {worst:.3g}")  # fmt: skip
    for k, g in one["grads"].items():
        torch.testing.assert_close(two["grads"][k], g, atol=1e-6, rtol=1e-4, msg=k)
    if name == "hybrid":  # each stage built its global layers' types
        assert runs[2]["layer_kinds"] == [["GatedDeltaNet", "GatedDeltaNet"], ["GatedDeltaNet", "SelfAttention"]]


def test_stages_that_cannot_split_the_layers_evenly_are_refused_by_name() -> None:
    from mtp_trainer.config import ConfigError
    from mtp_trainer.model_provider import ModelProvider

    with pytest.raises(ConfigError, match=r"spec.trainer.strategy.pipelineParallelSize 2 must divide the model's 3"):
        ModelProvider(HYBRID, pipeline_parallel_size=2).check()  # 3 layers
    assert list(ModelProvider(HYBRID_4, pipeline_parallel_size=2).stage_layers(1)) == [2, 3]
