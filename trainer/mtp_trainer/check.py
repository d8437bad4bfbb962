"""``python -m mtp_trainer.main --job FILE --check``: the whole plan, checked before anything starts.

Nothing is downloaded, allocated or built. The check runs, in order:

1. the manifest validation that ``mtpjob validate`` and the operator's admission run
   (``mtp_api.validation`` -> ``semantic_checks`` -> ``mtp_api.capabilities``: schema, CEL, batch
   arithmetic, the layouts and families this release trains, the rlvr needs);
2. the trainer's own derivation of its config (``config.from_job``) at the job's world size
   (``replicas x max(gpusPerReplica, 1)``);
3. the model: a ``tiny`` shape directly; a ``path``/``pvc`` checkpoint from its config.json when it is
   readable here (else at start-up, before any weight loads); a ``huggingFace`` id at start-up, where
   ``hub.fetch`` downloads config.json first and runs the same checks before it fetches any weights;
4. the data: the format each file needs, and every local file or glob that is not on a volume the
   operator mounts.

It prints the plan as one JSON object on stdout (family, layers, parameter estimate, TP/PP/DP, mode,
pipeline, data) and returns 0; a job that cannot run raises :class:`ConfigError` or ``ManifestError``
naming the field (exit 2 in ``main``).
"""

from __future__ import annotations

import glob
from dataclasses import replace
from pathlib import Path
from typing import Any

from mtp_api import types as t
from mtp_api.validation import load_job, validate_file
from mtp_trainer import families
from mtp_trainer.config import ConfigError, ModelConfig, TrainerConfig, from_job
from mtp_trainer.model_provider import ModelProvider


def check_model(m: ModelConfig, cfg: TrainerConfig, spec_mtp_layers: int | None) -> ModelConfig:
    """The model-dependent refusals, shared by ``--check`` and the trainer's start-up: the export
    family's rules, the spec's MTP depth against the checkpoint's, the tensor-parallel split."""
    if spec_mtp_layers is not None and m.mtp_num_layers != spec_mtp_layers:
        raise ConfigError(
            f"spec.model.mtpNumLayers is {spec_mtp_layers} but the checkpoint has "
            f"{m.mtp_num_layers}; remove the field or set it to {m.mtp_num_layers}"
        )
    if cfg.mtp.mode != t.MTPTrainingMode.DISABLED and m.mtp_num_layers < 1:
        raise ConfigError(
            f"spec.trainer.mtp.trainingMode {cfg.mtp.mode}: the checkpoint has no MTP layer; use trainingMode: "
            "disabled or a checkpoint with mtp.* weights"
        )
    families.get(m.family).check(m)
    par = cfg.parallel
    ModelProvider(
        m,
        par.tensor_parallel_size,
        expert_parallel_size=par.expert_parallel_size,
        sequence_parallel=par.sequence_parallel,
        pipeline_parallel_size=par.pipeline_parallel_size,
    ).check()
    return m


def model_from_hf_config(hf_cfg: dict[str, Any], cfg: TrainerConfig, spec_mtp_layers: int | None) -> ModelConfig:
    """ModelConfig from a parsed config.json (MTP depth, layer types, experts checked), then
    :func:`check_model`. ``hub.fetch`` calls this on config.json alone, before any weights."""
    c = hf_cfg.get("text_config") or hf_cfg
    fam = families.for_model_type(str(c.get("model_type", hf_cfg.get("model_type", ""))))
    m = fam.model_config_from_hf(hf_cfg, cfg.model.family, cfg.model.dtype)
    m = replace(m, max_position_embeddings=max(m.max_position_embeddings, cfg.data.seq_length))
    return check_model(m, cfg, spec_mtp_layers)


def _model_plan(job: t.MTPTrainingJob, cfg: TrainerConfig) -> dict[str, Any]:
    from mtp_trainer import hf_import

    src = job.spec.model.source
    spec_mtp = job.spec.model.mtp_num_layers
    if cfg.source.kind == "tiny":
        m = check_model(cfg.model, cfg, spec_mtp if spec_mtp is not None else cfg.model.mtp_num_layers)
        origin = "tiny"
    elif cfg.source.kind == "huggingFace":
        return {
            "source": f"huggingFace:{cfg.source.repo_id}@{cfg.source.revision or 'main'}",
            "config": "downloaded first at start-up and checked (MTP depth, layer types, experts, TP and pipeline split) "
            "before any weights are fetched",
            "family": cfg.model.family,
            "mtp_layers": spec_mtp,
        }
    else:
        assert cfg.source.path is not None
        path = Path(cfg.source.path)
        origin = f"pvc:{src.pvc.claim_name}/{src.pvc.path}" if src.pvc is not None else f"path:{path}"
        if not (path / "config.json").is_file():
            if src.pvc is None:
                raise ConfigError(
                    f"spec.model.source.path: {path} has no config.json; point it at a Hugging Face checkpoint "
                    "directory (config.json, *.safetensors, tokenizer files)"
                )
            return {
                "source": origin,
                "config": f"{path}/config.json on the claim, checked at start-up before any weights load",
                "family": cfg.model.family,
                "mtp_layers": spec_mtp,
            }
        m = model_from_hf_config(hf_import.read_config(path), cfg, spec_mtp)
    return {
        "source": origin,
        "family": m.family,
        "layers": m.num_layers,
        "hidden_size": m.hidden_size,
        "attention_heads": m.num_attention_heads,
        "key_value_heads": m.num_key_value_heads,
        "vocab_size": m.vocab_size,
        "mtp_layers": m.mtp_num_layers,
        "parameters": m.num_parameters(),
        "dtype": m.dtype,
        **(
            {
                "experts": {
                    "routed": m.num_experts,
                    "per_token": m.num_experts_per_tok,
                    "intermediate_size": m.moe_intermediate_size,
                    "shared_intermediate_size": m.shared_expert_intermediate_size,
                    "aux_loss_coeff": m.moe_aux_loss_coeff,
                }
            }
            if m.is_moe()
            else {}
        ),
    }


def _mounts(job: t.MTPTrainingJob) -> list[str]:
    vols = job.spec.trainer.volumes
    return [v.mount_path.rstrip("/") + "/" for v in (vols.data, vols.checkpoints) if v is not None]


def _data_plan(job: t.MTPTrainingJob, cfg: TrainerConfig) -> dict[str, Any]:
    """Each data file: built in, on a volume the operator mounts (checked at start-up), or local
    (must match a file now)."""
    base = Path(cfg.data.base_dir)
    mounts = _mounts(job)
    data = job.spec.trainer.data
    files: list[dict[str, str]] = []
    for key, names in (("trainFiles", data.train_files), ("validationFiles", data.validation_files)):
        for i, name in enumerate(names):
            field = f"spec.trainer.data.{key}[{i}]"
            if name.startswith("builtin:"):
                files.append({"file": name, "where": "built in"})
                continue
            p = Path(name)
            full = p if p.is_absolute() else base / p
            hits = glob.glob(str(full))
            if hits:
                files.append({"file": name, "where": f"local ({len(hits)} file(s))"})
            elif p.is_absolute() and any(str(p).startswith(m) for m in mounts):
                files.append({"file": name, "where": "on a mounted volume (checked at start-up)"})
            else:
                mounted = f" (volumes mount at {', '.join(mounts)})" if mounts else ""
                raise ConfigError(
                    f"{field}: {name!r} matches no file (looked for {full}){mounted}; fix the path, put it on "
                    "spec.trainer.volumes.data, or use a builtin: data set"
                )
    return {
        "format": str(data.format),
        "files": files,
        "seq_length": cfg.data.seq_length,
        "micro_batch_size": cfg.data.micro_batch_size,
        "grad_accum_steps": cfg.data.grad_accum_steps,
    }


def plan(job_file: Path) -> dict[str, Any]:
    """Everything the trainer would build for ``job_file``; raises on the first thing it cannot run."""
    job = load_job(job_file)
    (report,) = validate_file(job_file)  # load_job passed: one document, no errors; keep its warnings
    tr = job.spec.trainer
    world = tr.world_size()
    cfg = from_job(job, base_dir=job_file.resolve().parent, world_size=world)
    strat = tr.strategy
    return {
        "job": job.metadata.name,
        "pipeline": str(job.spec.pipeline),
        "mode": cfg.mtp.mode,
        "model": _model_plan(job, cfg),
        "parallel": {
            "world_size": world,
            "device": "gpu" if tr.gpus_per_replica > 0 else "cpu",
            "tensor": cfg.parallel.tensor_parallel_size,
            "pipeline": cfg.parallel.pipeline_parallel_size,
            "data": world // (cfg.parallel.tensor_parallel_size * cfg.parallel.pipeline_parallel_size),
            "expert": cfg.parallel.expert_parallel_size,
            "sequence_parallel": strat.sequence_parallel,
            "recompute": str(strat.recompute),
            "distributed_optimizer": strat.distributed_optimizer,
        },
        "data": _data_plan(job, cfg),
        "steps": cfg.optim.max_steps,
        "warnings": [str(w) for w in report.warnings],
    }
