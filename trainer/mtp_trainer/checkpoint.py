"""Resumable checkpoints: ``DIR/checkpoints/step_N`` written atomically.

A checkpoint directory holds, per tensor-parallel rank, ``model_tp{r}.pt`` (Megatron state dict of
that shard; ``model_tp{r}_pp{p}.pt`` per pipeline stage with pipeline parallel, ``..._ep{e}.pt`` per
expert-parallel rank with expert parallel) and ``optim_tp{r}.pt`` (AdamW state + LR-schedule step; with the distributed optimizer,
one ``optim_tp{r}_dp{d}of{D}.pt`` per data-parallel rank, ``optimizer.py``), plus ``meta.json`` (step,
config, RNG states) and the tokenizer files. The data order is a pure function of the step
(``data.BatchSchedule``), so model + optimizer + RNG + step is everything a bit-for-bit resume
needs.

Atomicity: rank 0 creates ``.step_N.tmp``, every rank writes its files there, and after a barrier
rank 0 renames it to ``step_N`` (``os.rename`` is atomic on one filesystem). A crash leaves at
worst a ``.tmp`` directory, which :func:`latest` ignores.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from megatron.core import parallel_state as ps
from torch import nn

from mtp_trainer import optimizer as optim
from mtp_trainer.config import TrainerConfig


@contextmanager
def atomic_dir(final: Path, is_writer: bool = True) -> Iterator[Path]:
    """Yield a temporary sibling of ``final``; on success it replaces ``final`` in one rename."""
    tmp = final.parent / f".{final.name}.tmp"
    if is_writer:
        final.parent.mkdir(parents=True, exist_ok=True)
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir()
    _barrier()
    yield tmp
    _barrier()
    if is_writer:
        old = final.parent / f".{final.name}.old"
        if final.exists():
            os.rename(final, old)
        os.rename(tmp, final)
        if old.exists():
            shutil.rmtree(old)
    _barrier()


def _barrier() -> None:
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


def _rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def pp_suffix() -> str:
    """``_pp{p}`` for this pipeline stage with pipeline parallel and ``_ep{e}`` for this rank's experts
    with expert parallel, else empty (the one-rank names)."""
    out = ""
    if dist.is_initialized() and ps.get_pipeline_model_parallel_world_size() > 1:
        out += f"_pp{ps.get_pipeline_model_parallel_rank()}"
    if dist.is_initialized() and ps.get_expert_model_parallel_world_size() > 1:
        out += f"_ep{ps.get_expert_model_parallel_rank()}"
    return out


def _writes_model() -> bool:
    """One rank per distinct set of weights writes them: data-parallel rank 0, or, with expert parallel
    (whose ranks are data-parallel ranks holding other experts), expert-data-parallel rank 0."""
    if dist.is_initialized() and ps.get_expert_model_parallel_world_size() > 1:
        return bool(ps.get_expert_data_parallel_rank() == 0)
    return bool(ps.get_data_parallel_rank() == 0)


def save(
    root: Path,
    step: int,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    cfg: TrainerConfig,
    tokenizer: Any,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write ``root/checkpoints/step_{step}`` atomically and return it."""
    final = root / "checkpoints" / f"step_{step}"
    tp_rank = ps.get_tensor_model_parallel_rank()
    pp = pp_suffix()
    writes = _writes_model()
    is_main = not dist.is_initialized() or dist.get_rank() == 0
    with atomic_dir(final, is_writer=is_main) as tmp:
        if writes:  # data-parallel replicas hold identical weights
            torch.save(model.state_dict(), tmp / f"model_tp{tp_rank}{pp}.pt")
        if writes or optim.is_sharded(optimizer):  # a sharded optimizer: every rank its partition
            torch.save(optim.state_dict(optimizer), optim.state_file(tmp, optimizer, tp_rank, pp))
        if is_main:
            meta = {"step": step, "config": asdict(cfg), **(extra or {})}
            (tmp / "meta.json").write_text(json.dumps(meta, indent=1, default=str))
            torch.save(_rng_state(), tmp / "rng.pt")
            tokenizer.save_pretrained(str(tmp))
    return final


def latest(root: Path) -> Path | None:
    """The newest complete checkpoint under ``root/checkpoints`` (tmp dirs are ignored)."""
    base = root / "checkpoints"
    if not base.is_dir():
        return None
    steps = [p for p in base.iterdir() if p.name.startswith("step_") and (p / "meta.json").is_file()]
    return max(steps, key=lambda p: int(p.name.split("_")[1]), default=None)


def load(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer | None) -> dict[str, Any]:
    """Restore model (+ optimizer, RNG) from ``path``; returns its meta (with ``step``)."""
    tp_rank = ps.get_tensor_model_parallel_rank()
    pp = pp_suffix()
    model_file = path / f"model_tp{tp_rank}{pp}.pt"
    if not model_file.is_file():
        written = ", ".join(sorted(p.name for p in path.glob("model_tp*.pt"))) or "no model files"
        raise FileNotFoundError(
            f"{model_file} is missing (the checkpoint has {written}): it was written with a different "
            "tensorParallelSize, pipelineParallelSize or expertParallelSize; resume with the same parallel layout "
            "or start with --fresh"
        )
    model.load_state_dict(torch.load(model_file, map_location="cpu", weights_only=True), strict=True)
    if optimizer is not None:
        optim.load_state_dict(optimizer, optim.state_file(path, optimizer, tp_rank, pp))
    rng = torch.load(path / "rng.pt", map_location="cpu", weights_only=False)
    torch.set_rng_state(rng["torch"])
    if "cuda" in rng and torch.cuda.is_available():
        torch.cuda.set_rng_state(rng["cuda"])
    meta: dict[str, Any] = json.loads((path / "meta.json").read_text())
    return meta
