"""torch.distributed + Megatron parallel state, from torchrun's environment.

torchrun (or the operator's StatefulSet) sets RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR /
MASTER_PORT. Without them we run as a single local process (rank 0 of 1) on a free loopback port,
which is what ``mtpjob run`` and the tests do. gloo on CPU, nccl on GPU.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from megatron.core import parallel_state as ps

from mtp_trainer import cpu_compat


@dataclass(frozen=True)
class DistInfo:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init(
    tensor_parallel_size: int = 1, pipeline_parallel_size: int = 1, seed: int = 1234, expert_parallel_size: int = 1
) -> DistInfo:
    """Initialise the process group (once) and Megatron's model-parallel groups (the expert-parallel
    groups split each pipeline stage's data-parallel ranks, as Megatron's do)."""
    cpu_compat.apply()
    launched = "RANK" in os.environ
    rank = int(os.environ.get("RANK", "0"))
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    # A lone process rendezvouses with itself through an in-memory store: no port to pick, so
    # nothing can race the metrics port a caller chose, and the environment stays untouched.
    if cpu_compat.on_cpu():
        device, backend = torch.device("cpu"), "gloo"
    else:
        torch.cuda.set_device(local)
        device, backend = torch.device("cuda", local), "nccl"
    if not dist.is_initialized():
        if launched:
            dist.init_process_group(backend=backend, init_method="env://", rank=rank, world_size=world)
        else:
            dist.init_process_group(backend=backend, store=dist.HashStore(), rank=0, world_size=1)
    if not ps.model_parallel_is_initialized():
        ps.initialize_model_parallel(
            tensor_parallel_size, pipeline_parallel_size, expert_model_parallel_size=expert_parallel_size
        )
    cpu_compat.seed_model_parallel_rng(seed)
    return DistInfo(rank=rank, world_size=world, local_rank=local, device=device)


def collective_device() -> torch.device:
    """Where a tensor built for a collective must live: the current GPU under nccl, else the CPU (gloo)."""
    return torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")


def shutdown() -> None:
    if ps.model_parallel_is_initialized():
        ps.destroy_model_parallel()
    if dist.is_initialized():
        dist.destroy_process_group()
