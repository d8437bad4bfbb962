"""What this release can run, checked before any pod starts.

``mtpjob validate``, the operator's admission and the trainer's start-up all run these checks
(through ``validation.semantic_checks``), so a job this release cannot run is refused up front
with the field named, instead of failing after its pods have taken GPUs. The schema and CEL say
what the API accepts; this module says what the trainer and rollout of this release can do.
"""

from __future__ import annotations

from mtp_api import types as t
from mtp_api.validation import Finding

BUILTIN_ARITHMETIC = "builtin:arithmetic"
PROMPT_SUFFIXES = (".jsonl", ".parquet")


def capability_findings(job: t.MTPTrainingJob) -> tuple[list[Finding], list[Finding]]:
    """(errors, warnings): the layouts and families this release trains, then the rlvr needs."""
    errors: list[Finding] = []
    spec = job.spec
    if spec.model.family not in t.TRAINER_FAMILIES:
        errors.append(
            Finding(
                "spec.model.family",
                f"{spec.model.family}: this release's trainer builds {', '.join(sorted(t.TRAINER_FAMILIES))}; "
                "the job would fail at trainer start-up",
            )
        )
    errors += trainer_findings(job)
    errors += expert_findings(job)
    rl_errors, warnings = rlvr_findings(job)
    return errors + rl_errors, strategy_warnings(job) + warnings


def strategy_warnings(job: t.MTPTrainingJob) -> list[Finding]:
    """Strategy switches this release's trainer accepts but does not apply, said out loud.
    (``recompute`` is applied: Megatron's activation recompute, full or selective; so is
    ``sequenceParallel``, which the CRD's CEL allows with tensor parallel only, through the trainer's
    own sequence-parallel norm; and ``distributedOptimizer``, the AdamW state sharded over the
    data-parallel ranks, ``mtp_trainer.optimizer``.)"""
    strat = job.spec.trainer.strategy
    out: list[Finding] = []
    if strat.distributed_optimizer and job.spec.trainer.data_parallel_size() <= 1:
        out.append(
            Finding(
                "spec.trainer.strategy.distributedOptimizer",
                "has no effect with one data-parallel rank (it shards the AdamW state over the data-parallel "
                "ranks); it is ignored",
            )
        )
    return out


def expert_findings(job: t.MTPTrainingJob) -> list[Finding]:
    """Mixture of experts: the expert-parallel arithmetic, and the expert-parallel layouts the trainer
    does not build. A MoE job is a ``qwen3_5_moe`` family or a tiny model with ``numExperts``."""
    errors: list[Finding] = []
    spec = job.spec
    strat = spec.trainer.strategy
    tiny = spec.model.source.tiny
    experts = tiny.moe.num_experts if tiny is not None and tiny.moe is not None else 0
    is_moe = experts > 0 or spec.model.family == t.ModelFamily.QWEN3_5_MOE
    ep = strat.expert_parallel_size
    dp = spec.trainer.data_parallel_size()
    if ep > 1 and not is_moe:
        errors.append(
            Finding(
                "spec.trainer.strategy.expertParallelSize",
                f"{ep}: the model has no experts (family {spec.model.family}); set it to 1",
            )
        )
    elif experts and experts % ep:
        errors.append(
            Finding(
                "spec.trainer.strategy.expertParallelSize",
                f"{ep} does not divide spec.model.source.tiny.moe.numExperts {experts}; use a divisor of it",
            )
        )
    elif dp >= 1 and dp % ep:
        errors.append(
            Finding(
                "spec.trainer.strategy.expertParallelSize",
                f"{ep} does not divide the data-parallel size {dp} (replicas x gpusPerReplica / "
                "(tensorParallelSize x pipelineParallelSize)); experts are split within data-parallel ranks",
            )
        )
    elif ep > 1 and strat.tensor_parallel_size > 1:
        errors.append(
            Finding(
                "spec.trainer.strategy.expertParallelSize",
                f"{ep} with tensorParallelSize {strat.tensor_parallel_size}: this release's trainer splits experts "
                "over expert-parallel ranks at tensorParallelSize 1 only (expert tensor parallel groups are not "
                "wired); use expertParallelSize 1 (experts split over the TP ranks) or tensorParallelSize 1",
            )
        )
    elif ep > 1 and strat.distributed_optimizer:
        errors.append(
            Finding(
                "spec.trainer.strategy.distributedOptimizer",
                f"with expertParallelSize {ep}: the sharded optimizer partitions weights every data-parallel rank "
                "holds alike, and expert-parallel ranks hold different experts; set distributedOptimizer: false "
                "or expertParallelSize: 1",
            )
        )
    if is_moe and strat.tensor_parallel_size > 1 and not strat.sequence_parallel:
        errors.append(
            Finding(
                "spec.trainer.strategy.sequenceParallel",
                f"a mixture-of-experts model at tensorParallelSize {strat.tensor_parallel_size} needs sequence "
                "parallel (Megatron's MoE layer refuses to train without it; experts split over the "
                "tensor-parallel ranks); set it to true",
            )
        )
    if experts and spec.model.family == t.ModelFamily.QWEN3_5:
        errors.append(
            Finding(
                "spec.model.family",
                "qwen3_5 writes dense MLPs but spec.model.source.tiny.moe is set; use qwen3_next (served by "
                "vLLM on CPU) or qwen3_5_moe (GPU images)",
            )
        )
    if tiny is not None and not experts and spec.model.family == t.ModelFamily.QWEN3_5_MOE:
        errors.append(
            Finding(
                "spec.model.source.tiny.moe",
                "family qwen3_5_moe needs a mixture of experts; set moe.numExperts, numExpertsPerTok, "
                "moeIntermediateSize and sharedExpertIntermediateSize",
            )
        )
    return errors


# What the SFT reader parses: JSON Lines only (data.load_conversations); these are refused by name.
SFT_UNREADABLE_SUFFIXES = (".parquet", ".arrow", ".csv", ".tsv", ".json", ".txt")


def trainer_findings(job: t.MTPTrainingJob) -> list[Finding]:
    """The trainer's start-up refusals that the job alone decides (``mtp_trainer.check`` adds the ones
    that need a checkpoint's config.json or the data files)."""
    errors: list[Finding] = []
    spec = job.spec
    tr = spec.trainer
    mode = tr.mtp.training_mode
    tiny = spec.model.source.tiny
    n_mtp = spec.model.mtp_num_layers
    if mode != t.MTPTrainingMode.DISABLED and (n_mtp == 0 or (n_mtp is None and tiny is not None)):
        errors.append(
            Finding(
                "spec.model.mtpNumLayers",
                f"{n_mtp or 0}: trainer.mtp.trainingMode {mode} trains an MTP layer; set mtpNumLayers to 1 "
                "or use trainingMode: disabled",
            )
        )
    tp = tr.strategy.tensor_parallel_size
    seq = tr.hyperparameters.seq_length
    if tr.strategy.sequence_parallel and tp > 1 and seq % tp:
        errors.append(
            Finding(
                "spec.trainer.hyperparameters.seqLength",
                f"{seq} is not divisible by tensorParallelSize {tp}; sequence parallel splits each sequence over "
                "the tensor-parallel ranks; use a multiple of it",
            )
        )
    if tiny is not None and tiny.vocab_size % tp:
        errors.append(
            Finding(
                "spec.model.source.tiny.vocabSize",
                f"{tiny.vocab_size} is not divisible by tensorParallelSize {tp} (the output layer splits the "
                "vocabulary across tensor-parallel ranks); use a multiple of it",
            )
        )
    if spec.pipeline == t.Pipeline.SFT:
        files = [("trainFiles", i, f) for i, f in enumerate(tr.data.train_files)]
        files += [("validationFiles", i, f) for i, f in enumerate(tr.data.validation_files)]
        for key, i, name in files:
            if name.lower().endswith(SFT_UNREADABLE_SUFFIXES):
                errors.append(
                    Finding(
                        f"spec.trainer.data.{key}[{i}]",
                        f"{name!r}: sft reads JSON Lines (one JSON record per line, .jsonl); convert the file "
                        "(e.g. pandas.read_parquet(...).to_json(path, orient='records', lines=True))",
                    )
                )
    return errors


def rlvr_findings(job: t.MTPTrainingJob) -> tuple[list[Finding], list[Finding]]:
    """(errors, warnings) for an rlvr job; nothing for other pipelines."""
    errors: list[Finding] = []
    warnings: list[Finding] = []
    spec = job.spec
    tr = spec.trainer
    if spec.pipeline != t.Pipeline.RLVR:
        if tr.warmup is not None:
            warnings.append(Finding("spec.trainer.warmup", "only rlvr jobs run a warm-up; it is ignored for sft"))
        return errors, warnings
    rollout = spec.rollout
    if rollout is not None and rollout.replicas < 1:
        errors.append(Finding("spec.rollout.replicas", "rlvr generates every sample on the rollout; set replicas >= 1"))
    if tr.volumes.checkpoints is None:
        errors.append(
            Finding(
                "spec.trainer.volumes.checkpoints",
                "rlvr pushes each new policy to the rollout through this shared (ReadWriteMany) claim; add it",
            )
        )
    for i, name in enumerate(tr.data.train_files + tr.data.validation_files):
        field = (
            f"spec.trainer.data.trainFiles[{i}]"
            if i < len(tr.data.train_files)
            else (f"spec.trainer.data.validationFiles[{i - len(tr.data.train_files)}]")
        )
        if name.startswith("builtin:"):
            if name != BUILTIN_ARITHMETIC:
                errors.append(Finding(field, f"{name!r}: rlvr's built-in prompt set is {BUILTIN_ARITHMETIC!r}"))
        elif not name.lower().endswith(PROMPT_SUFFIXES):
            errors.append(
                Finding(field, f"{name!r}: rlvr reads prompts from JSONL (.jsonl) or Parquet (.parquet) files")
            )
    g = tr.grpo
    dp = tr.data_parallel_size()
    per_step = g.prompts_per_step * g.samples_per_prompt
    if per_step % (g.mini_batches * dp) != 0:
        errors.append(
            Finding(
                "spec.trainer.grpo.miniBatches",
                f"promptsPerStep x samplesPerPrompt = {per_step} must split evenly into miniBatches ({g.mini_batches})"
                f" x data-parallel ranks ({dp}); change one of them",
            )
        )
    if rollout is not None:
        gen = rollout.generation
        if gen.max_tokens >= tr.hyperparameters.seq_length:
            errors.append(
                Finding(
                    "spec.rollout.generation.maxTokens",
                    f"{gen.max_tokens} leaves no room for the prompt in trainer seqLength "
                    f"{tr.hyperparameters.seq_length}; lower maxTokens or raise seqLength",
                )
            )
        if gen.temperature == 0.0:
            warnings.append(
                Finding(
                    "spec.rollout.generation.temperature",
                    "0 makes every sample of a group identical, so every GRPO advantage is 0; use about 1.0",
                )
            )
    return errors, warnings
