"""Measure what one engine step costs, for ``numSpeculativeTokens: auto`` (a ``Calibration``).

The k schedule needs, for this model on this hardware and dtype, the seconds per engine step of
the plain engine and of the speculative engine at each k in 0..max_k, at a few batch sizes. The
head's acceptance does not enter: a rejected draft costs the same step as an accepted one, so
the step time is a property of the engine, and acceptance is measured separately, live.

How: one server per engine (plain; MTP with k = 1..max; and MTP scheduled at k=0 through vLLM's
batch-size schedule, which still runs the drafter's first forward), each started from the job's
own ``server_plan``. For each batch size b, b requests at once, ``ignore_eos`` so each generates
``tokens`` tokens, with vLLM's speculative counters around them. The step time is the *effective*
one, ``b x E x wall / tokens``: E is the tokens each request gains per step (1 + accepted/drafts
from the counters; 1 without drafts), so tokens / (b x E) is the steps each request took. Why not
vLLM's own step counter (``vllm:iteration_tokens_total``)? Measured here, an MTP engine at k=0 took
about as long per counted step as the plain engine yet decoded at 0.7-0.8x its tokens/s: time per
counted step misses work the prediction must include, the effective step time does not. The
smallest of ``repeats`` is kept (other processes can only slow a repeat down).

The result is written next to the export (``mtp_calibration.json``, what ``mtpjob run`` and the
benchmarks read) and as a ConfigMap manifest that ``spec.rollout.speculative.calibration`` names.
"""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

from mtp_api import types as t
from mtp_api.acceptance import counter_series, increments
from mtp_api.exposition import parse
from mtp_rollout.runtime.launcher import ServerPlan, server_plan
from mtp_rollout.runtime.server import VllmServer, free_port, running
from mtp_rollout.speculation.cost_model import Calibration
from mtp_rollout.speculation.schedule import Schedule
from mtpjob.local.bench import with_k

CALIBRATION_FILE = "mtp_calibration.json"
CONFIGMAP_KEY = "calibration.json"


def calibration_configmap_name(job: t.MTPTrainingJob) -> str:
    return f"{job.metadata.name}-calibration"


def auto_job(job: t.MTPTrainingJob, max_k: int) -> t.MTPTrainingJob:
    """The job with ``numSpeculativeTokens: auto`` up to ``max_k``, naming its calibration ConfigMap."""
    rollout = job.spec.rollout or t.RolloutSpec()
    spec = rollout.speculative.model_copy(
        update={
            "method": t.SpeculativeMethod.MTP,
            "num_speculative_tokens": t.AUTO,
            "max_speculative_tokens": max_k,
            "calibration": t.CalibrationRef(config_map=calibration_configmap_name(job)),
        }
    )
    rollout = rollout.model_copy(update={"speculative": spec})
    return job.model_copy(update={"spec": job.spec.model_copy(update={"rollout": rollout})})


def engine_plans(job: t.MTPTrainingJob, model_path: str, max_k: int, port: int) -> list[tuple[int | None, ServerPlan]]:
    """(k, plan) for every engine to measure; k None is the plain engine, k 0 the speculative
    engine scheduled at zero drafts (vLLM's batch-size schedule, every batch size at 0)."""
    plans: list[tuple[int | None, ServerPlan]] = [
        (None, server_plan(job, model_path, host="127.0.0.1", port=port, speculative=False))
    ]
    zero = Schedule("speculative", max_k, ((1, 1, 0),), {}, 0.0)
    plans.append((0, server_plan(auto_job(job, max_k), model_path, host="127.0.0.1", port=port, schedule=zero)))
    for k in range(1, max_k + 1):
        plans.append((k, server_plan(with_k(job, k), model_path, host="127.0.0.1", port=port)))
    return plans


def step_seconds(
    server: VllmServer, model_name: str, prompts: list[str], batch: int, tokens: int, repeats: int
) -> float:
    """Effective seconds per engine step with ``batch`` requests in flight, the fastest repeat."""
    server.complete(model_name, prompts[0], 8)  # warm-up, outside the timed window
    times = []
    for r in range(repeats):
        batch_prompts = [prompts[(r * batch + i) % len(prompts)] for i in range(batch)]
        before, _ = counter_series(parse(server.metrics_text()).samples)
        start = time.perf_counter()
        with ThreadPoolExecutor(max_workers=batch) as pool:
            answers = list(pool.map(lambda p: server.complete(model_name, p, tokens), batch_prompts))
        seconds = time.perf_counter() - start
        inc = increments(before, counter_series(parse(server.metrics_text()).samples)[0])
        generated = sum(int(a["usage"]["completion_tokens"]) for a in answers)
        if generated <= 0:
            raise RuntimeError("vLLM generated no tokens; cannot calibrate")
        gained = 1.0 + inc.accepted / inc.drafts if inc.drafts > 0 else 1.0
        times.append(batch * gained * seconds / generated)
    return min(times)


def hardware_name(rollout: t.RolloutSpec) -> str:
    """What the calibration holds for: the CPU model and core count (CPU rollouts) or the GPU count."""
    if rollout.gpus_per_replica > 0:
        return f"{rollout.gpus_per_replica} GPU(s), tensor parallel {rollout.tensor_parallel_size}"
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"cpu: {model} x{os.cpu_count()}"


def calibrate(
    job: t.MTPTrainingJob,
    model_path: str,
    prompts: list[str],
    *,
    max_k: int,
    batch_sizes: list[int],
    workdir: Path,
    tokens: int = 64,
    repeats: int = 5,
    on_progress: Callable[[str], None] = lambda _: None,
) -> Calibration:
    """Start each engine in turn and time its steps at every batch size."""
    if max_k < 1 or not batch_sizes or min(batch_sizes) < 1:
        raise ValueError("calibrate needs max_k >= 1 and batch sizes >= 1")
    workdir.mkdir(parents=True, exist_ok=True)
    sizes = sorted(set(batch_sizes))
    plain: dict[int, float] = {}
    spec: dict[int, dict[int, float]] = {}
    for k, plan in engine_plans(job, model_path, max_k, port=free_port()):
        label = "plain" if k is None else f"mtp k={k}"
        port = int(plan.args[plan.args.index("--port") + 1])
        on_progress(f"starting vLLM ({label})")
        with running(plan, workdir / f"vllm-calibrate-{'plain' if k is None else f'k{k}'}.log", port=port) as server:
            row: dict[int, float] = {}
            for b in sizes:
                row[b] = step_seconds(server, job.metadata.name, prompts, b, tokens, repeats)
                on_progress(f"{label}, batch {b}: {row[b] * 1000:.2f} ms per step")
        if k is None:
            plain = row
        else:
            spec[k] = row
    rollout = job.spec.rollout or t.RolloutSpec()
    return Calibration(
        model=str(model_path),
        hardware=hardware_name(rollout),
        dtype=job.spec.model.dtype,
        max_k=max_k,
        batch_sizes=tuple(sizes),
        plain_step_s=plain,
        spec_step_s=spec,
        created=datetime.now(UTC).isoformat(timespec="seconds"),
        notes=f"{tokens} tokens per request, ignore_eos, fastest of {repeats}; {job.metadata.name}'s server settings",
    )


def configmap_manifest(job: t.MTPTrainingJob, cal: Calibration) -> dict[str, Any]:
    """The ConfigMap that ``spec.rollout.speculative.calibration`` names (``kubectl apply -f``)."""
    import json

    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": calibration_configmap_name(job),
            **({"namespace": job.metadata.namespace} if job.metadata.namespace else {}),
            "labels": {"mtp.io/calibration": "true"},
        },
        "data": {CONFIGMAP_KEY: json.dumps(cal.to_json(), indent=2)},
    }


def write_calibration(job: t.MTPTrainingJob, cal: Calibration, model_dir: Path, out_dir: Path) -> tuple[Path, Path]:
    """``model_dir/mtp_calibration.json`` and ``out_dir/calibration-configmap.yaml``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    beside = model_dir / CALIBRATION_FILE
    cal.save(beside)
    manifest = out_dir / "calibration-configmap.yaml"
    manifest.write_text(yaml.safe_dump(configmap_manifest(job, cal), sort_keys=False))
    return beside, manifest
