"""``strategy.distributedOptimizer`` on two gloo data-parallel ranks: the AdamW state is sharded
(each rank holds a part, the parts add up to the whole), the updates equal the unsharded
optimizer's, and a resume from the per-rank state files continues exactly.

The reference is the plain ``torch.optim.AdamW`` run in the same two processes on the same batches,
so the only difference is the optimizer's layout.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.gloo_ranks import run_ranks

_WORKER = """
import sys
from dataclasses import replace
from pathlib import Path

import torch
import torch.distributed as dist

from mtp_trainer import distributed, mtp_modes, optimizer as optim
from mtp_trainer.config import ModelConfig, TrainerConfig
from mtp_trainer.data import causal_batch
from mtp_trainer.model_provider import ModelProvider
from mtp_trainer.train_loop import allreduce_grads, clip_grad_norm

info = distributed.init(1, 1, seed=1234)
out_dir = Path(sys.argv[1])
M = ModelConfig(vocab_size=256)


def batch(step):
    g = torch.Generator().manual_seed(100 * step + info.rank)  # each rank its own data
    ids = torch.randint(2, 256, (2, 33), generator=g)
    return causal_batch(ids, torch.ones(2, 32))


def train_step(model, opt, step):
    opt.zero_grad(set_to_none=True)
    mtp_modes.forward(model, batch(step), mtp_modes.JOINT, 0.3).loss.backward()
    allreduce_grads(model)
    clip_grad_norm([p for p in model.parameters() if p.grad is not None], 1.0)
    opt.step()


def run(sharded):
    torch.manual_seed(8)
    model = ModelProvider(M).provide()
    cfg = TrainerConfig(model=M)
    cfg = replace(cfg, parallel=replace(cfg.parallel, distributed_optimizer=sharded))
    opt = optim.build_optimizer(model, cfg)
    assert optim.is_sharded(opt) == sharded
    for step in range(2):
        train_step(model, opt, step)
    # Save after step 2, as a checkpoint does, then a third step.
    saved_w = {k: v.clone() if v is not None else v for k, v in model.state_dict().items()}
    path = optim.state_file(out_dir, opt, tp_rank=0)
    torch.save(optim.state_dict(opt), path)
    dist.barrier()
    train_step(model, opt, 2)
    # Resume: a fresh model and optimizer from the saved files, the same third step.
    torch.manual_seed(99)
    again = ModelProvider(M).provide()
    again.load_state_dict(saved_w)
    opt2 = optim.build_optimizer(again, cfg)
    optim.load_state_dict(opt2, optim.state_file(out_dir, opt2, tp_rank=0))
    train_step(again, opt2, 2)
    numel = torch.tensor([optim.state_numel(opt)])
    every = [torch.zeros(1, dtype=torch.long) for _ in range(2)]
    dist.all_gather(every, numel)
    return {
        "weights": {k: v.clone() for k, v in model.state_dict().items() if "_extra_state" not in k},
        "resumed": {k: v.clone() for k, v in again.state_dict().items() if "_extra_state" not in k},
        "state_numel": [int(x) for x in every],
        "files": sorted(p.name for p in out_dir.glob("optim_*.pt")),
    }


results = {"plain": run(False), "sharded": run(True)}
if info.rank == 0:
    torch.save(results, out_dir / "results.pt")
distributed.shutdown()
"""


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> dict:
    tmp = tmp_path_factory.mktemp("dist-opt")
    (tmp / "worker.py").write_text(_WORKER)
    run_ranks(tmp / "worker.py", [str(tmp)])
    return torch.load(tmp / "results.pt")


def test_state_is_sharded_over_data_parallel_ranks(results: dict) -> None:
    plain, sharded = results["plain"]["state_numel"], results["sharded"]["state_numel"]
    assert plain[0] == plain[1] > 0  # every rank holds all of it
    assert sum(sharded) == plain[0]  # the parts add up to the whole
    assert max(sharded) < plain[0] and min(sharded) > 0
    print(f"optimizer state elements per rank: plain {plain}, sharded {sharded}")
    assert results["sharded"]["files"] == ["optim_tp0.pt", "optim_tp0_dp0of2.pt", "optim_tp0_dp1of2.pt"]


def test_sharded_updates_equal_the_plain_optimizer(results: dict) -> None:
    plain, sharded = results["plain"]["weights"], results["sharded"]["weights"]
    for name, w in plain.items():
        torch.testing.assert_close(sharded[name], w, rtol=1e-6, atol=1e-7, msg=name)


@pytest.mark.parametrize("layout", ["plain", "sharded"])
def test_resume_from_the_state_files_continues_exactly(results: dict, layout: str) -> None:
    run = results[layout]
    for name, w in run["weights"].items():
        assert torch.equal(run["resumed"][name], w), name


def test_a_missing_partition_names_the_setting(tmp_path: Path) -> None:
    from mtp_trainer import optimizer as optim

    (tmp_path / "optim_tp0.pt").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match=r"distributedOptimizer.*--fresh") as err:
        optim.load_state_dict(torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))]), tmp_path / "optim_tp0_dp1of2.pt")
    assert "optim_tp0.pt" in str(err.value)
