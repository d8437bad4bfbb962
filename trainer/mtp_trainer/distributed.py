"""torch.distributed + Megatron parallel state, from torchrun's environment.

torchrun (or the operator's StatefulSet) sets RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR /
MASTER_PORT. Without them we run as a single local process (rank 0 of 1) on a free loopback port,
which is what ``mtpjob run`` and the tests do. gloo on CPU, nccl on GPU.
"""

from __future__ import annotations

import os
import socket
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


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def init(tensor_parallel_size: int = 1, pipeline_parallel_size: int = 1, seed: int = 1234) -> DistInfo:
    """Initialise the process group (once) and Megatron's model-parallel groups."""
    cpu_compat.apply()
    launched = "RANK" in os.environ
    rank = int(os.environ.get("RANK", "0"))
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    # A lone process gets a private loopback rendezvous; the environment is left untouched so that
    # child processes (tests, tools) do not inherit a port that is already taken.
    init_method = "env://" if launched else f"tcp://127.0.0.1:{_free_port()}"
    if cpu_compat.on_cpu():
        device, backend = torch.device("cpu"), "gloo"
    else:
        torch.cuda.set_device(local)
        device, backend = torch.device("cuda", local), "nccl"
    if not dist.is_initialized():
        dist.init_process_group(backend=backend, init_method=init_method, rank=rank, world_size=world)
    if not ps.model_parallel_is_initialized():
        ps.initialize_model_parallel(tensor_parallel_size, pipeline_parallel_size)
    cpu_compat.seed_model_parallel_rng(seed)
    return DistInfo(rank=rank, world_size=world, local_rank=local, device=device)


def shutdown() -> None:
    if ps.model_parallel_is_initialized():
        ps.destroy_model_parallel()
    if dist.is_initialized():
        dist.destroy_process_group()
