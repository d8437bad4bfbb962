"""Run a worker script as N gloo ranks on this machine, as torchrun would (RANK, WORLD_SIZE,
LOCAL_RANK, MASTER_ADDR/PORT in each process's environment), and fail with the rank's output tail."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def run_ranks(script: Path, args: list[str], world_size: int = 2, timeout_s: float = 600) -> None:
    """Start ``python script *args`` once per rank, wait for all, assert every rank exited 0."""
    port = free_port()
    procs = []
    for rank in range(world_size):
        env = dict(os.environ, RANK=str(rank), WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank))
        env.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        cmd = [sys.executable, str(script), *args]
        procs.append(subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    for rank, p in enumerate(procs):
        out, _ = p.communicate(timeout=timeout_s)
        assert p.returncode == 0, f"rank {rank}:\n{out[-3000:]}"
