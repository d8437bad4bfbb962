"""Typed trainer configuration, derived once from the ``MTPTrainingJob`` spec.

Each piece is a small frozen dataclass (torchtitan style); the root :class:`TrainerConfig` composes
them and is built by :func:`from_job`. Everything downstream takes these objects, never the raw
job, so that tests can build a model or a loop without a YAML file.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from mtp_api import contracts
from mtp_api import types as t


class ConfigError(ValueError):
    """Bad input: the message names the spec field and the fix."""


LINEAR_ATTENTION = "linear_attention"
FULL_ATTENTION = "full_attention"


@dataclass(frozen=True)
class ModelConfig:
    """The dense full-attention Qwen3.5 / Qwen3-Next layout (see docs/trainer.md).

    Gated attention (q_proj per head ``[q | gate]``), qk-RMSNorm, partial rotary, SwiGLU MLP,
    RMSNorm everywhere, one MTP module per depth of the Qwen3-Next design.
    """

    family: str = t.ModelFamily.QWEN3_NEXT.value
    hidden_size: int = 64
    num_layers: int = 2
    num_attention_heads: int = 2
    num_key_value_heads: int = 1
    head_dim: int = 32
    ffn_hidden_size: int = 128
    vocab_size: int = 512
    tie_word_embeddings: bool = False
    mtp_num_layers: int = 1
    rotary_percent: float = 0.25
    rotary_base: float = 10000.0
    norm_eps: float = 1e-6
    max_position_embeddings: int = 4096
    dtype: str = t.DType.FLOAT32.value
    init_std: float = 0.02
    # Qwen3.5 hybrid: per-layer "linear_attention" (Gated DeltaNet) / "full_attention"; () = all full.
    layer_types: tuple[str, ...] = ()
    linear_conv_kernel_dim: int = 4
    linear_key_head_dim: int = 0  # 0: head_dim
    linear_value_head_dim: int = 0  # 0: head_dim
    linear_num_key_heads: int = 0  # 0: num_key_value_heads
    linear_num_value_heads: int = 0  # 0: num_attention_heads
    # A vision-language source checkpoint whose vision tower (never trained) the export copies through.
    vision_source: str = ""
    # Mixture of experts (Qwen3-Next / Qwen3.5-MoE, HF names): when num_experts > 0 every MLP, the MTP
    # layer's included, is num_experts routed SwiGLU experts of moe_intermediate_size (softmax router,
    # top num_experts_per_tok, renormalised when norm_topk_prob) plus one shared SwiGLU expert of
    # shared_expert_intermediate_size scaled by sigmoid(shared_expert_gate(x)). ffn_hidden_size is unused.
    num_experts: int = 0
    num_experts_per_tok: int = 1
    moe_intermediate_size: int = 0
    shared_expert_intermediate_size: int = 0
    norm_topk_prob: bool = True
    moe_aux_loss_coeff: float = 0.0  # Switch load-balancing loss (HF router_aux_loss_coef), per MoE layer

    def is_linear(self, layer: int) -> bool:
        return bool(self.layer_types) and self.layer_types[layer] == LINEAR_ATTENTION

    def is_hybrid(self) -> bool:
        return LINEAR_ATTENTION in self.layer_types

    def linear_dims(self) -> tuple[int, int, int, int]:
        """(key heads, value heads, key head dim, value head dim) of the Gated DeltaNet layers."""
        return (
            self.linear_num_key_heads or self.num_key_value_heads,
            self.linear_num_value_heads or self.num_attention_heads,
            self.linear_key_head_dim or self.head_dim,
            self.linear_value_head_dim or self.head_dim,
        )

    def is_moe(self) -> bool:
        return self.num_experts > 0

    def torch_dtype(self) -> torch.dtype:
        return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[self.dtype]

    def num_parameters(self) -> int:
        """Parameter count of the trunk + MTP (used by the benchmark and logs)."""
        h, f, v = self.hidden_size, self.ffn_hidden_size, self.vocab_size
        q = self.num_attention_heads * self.head_dim
        kv = self.num_key_value_heads * self.head_dim
        mlp = 3 * h * f
        if self.is_moe():
            e, s = self.num_experts, self.shared_expert_intermediate_size
            mlp = e * 3 * h * self.moe_intermediate_size + e * h + (3 * h * s + h if s else 0)
        layer = h * (2 * q + 2 * kv) + q * h + mlp + 2 * h + 2 * self.head_dim
        nk, nv, dk, dv = self.linear_dims()
        conv = 2 * nk * dk + nv * dv
        linear = h * (conv + nv * dv + 2 * nv) + conv * self.linear_conv_kernel_dim + 2 * nv + dv + nv * dv * h
        linear += mlp + 2 * h
        n_linear = sum(self.is_linear(i) for i in range(self.num_layers))
        mtp = layer + 2 * h * h + 3 * h
        out = 0 if self.tie_word_embeddings else v * h
        trunk = (self.num_layers - n_linear) * layer + n_linear * linear
        return v * h + out + trunk + h + self.mtp_num_layers * mtp


@dataclass(frozen=True)
class MTPConfig:
    mode: str = t.MTPTrainingMode.JOINT.value
    loss_scaling_factor: float = 0.3

    def per_depth_scale(self, num_layers: int) -> float:
        """Megatron's ``mtp_loss_scaling_factor / mtp_num_layers``."""
        return self.loss_scaling_factor / max(num_layers, 1)


@dataclass(frozen=True)
class OptimConfig:
    learning_rate: float = 1e-3
    min_learning_rate: float = 0.0
    warmup_steps: int = 0
    weight_decay: float = 0.0
    clip_grad: float = 1.0
    max_steps: int = 10
    betas: tuple[float, float] = (0.9, 0.95)


@dataclass(frozen=True)
class DataConfig:
    train_files: tuple[str, ...] = ("builtin:pydoc-topics",)
    validation_files: tuple[str, ...] = ()
    validation_fraction: float = 0.05
    format: str = t.DataFormat.MESSAGES.value
    prompt_key: str = "prompt"
    response_key: str = "response"
    seq_length: int = 128
    micro_batch_size: int = 4
    grad_accum_steps: int = 1
    seed: int = 1234
    base_dir: str = "."


@dataclass(frozen=True)
class ParallelConfig:
    tensor_parallel_size: int = 1
    pipeline_parallel_size: int = 1
    recompute: str = t.Recompute.NONE.value
    expert_parallel_size: int = 1
    sequence_parallel: bool = False  # applied with tensor_parallel_size > 1 only
    distributed_optimizer: bool = False  # AdamW state sharded over data parallel (optimizer.py)


@dataclass(frozen=True)
class ScheduleConfig:
    save_steps: int = 100
    eval_steps: int = 50
    eval_batches: int = 4


@dataclass(frozen=True)
class MetricsConfig:
    port: int = 0
    job: str = "local"
    namespace: str = ""


@dataclass(frozen=True)
class SourceConfig:
    """Where the weights come from: ``tiny`` (random init), an HF checkpoint directory (``path``), or
    a Hub repo (``huggingFace``), which ``hub.fetch`` turns into a directory before anything reads it."""

    kind: str = "tiny"
    path: str | None = None
    repo_id: str | None = None
    revision: str | None = None


@dataclass(frozen=True)
class WarmupConfig:
    """rlvr: supervised steps before the first RL step (``spec.trainer.warmup``)."""

    steps: int = 0
    mode: str = t.MTPTrainingMode.JOINT.value
    learning_rate: float = 1e-3
    min_learning_rate: float = 0.0
    warmup_steps: int = 0
    micro_batch_size: int = 8
    grad_accum_steps: int = 1


@dataclass(frozen=True)
class RLConfig:
    """rlvr: prompts, GRPO, generation and reward settings (``spec.trainer.grpo``, ``spec.rollout``,
    ``spec.reward``). Generation runs on the job's vLLM rollout; the trainer's rank 0 drives it."""

    prompt_key: str = "prompt"
    answer_key: str = "ground_truth"
    response_key: str = "response"
    prompts_per_step: int = 8
    samples_per_prompt: int = 8
    clip_low: float = 0.2
    clip_high: float = 0.2
    kl_coef: float = 0.0
    mini_batches: int = 1
    validation_prompts: int = 32
    log_kl_to_initial: bool = False
    rollout_replicas: int = 1
    rollout_drafts: bool = True  # the rollout speculates with the MTP head, so the sync updates its drafter
    max_tokens: int = 64
    temperature: float = 1.0
    top_p: float = 1.0
    max_model_len: int = 512
    served_model_name: str = "local"
    reward: t.MathReward = field(default_factory=t.MathReward)
    warmup: WarmupConfig | None = None


@dataclass(frozen=True)
class TrainerConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    source: SourceConfig = field(default_factory=SourceConfig)
    mtp: MTPConfig = field(default_factory=MTPConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    data: DataConfig = field(default_factory=DataConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    seed: int = 1234
    rl: RLConfig | None = None


MODEL_PATH_ENV = contracts.ENV_MODEL_PATH


def _source(job: t.MTPTrainingJob, base_dir: Path) -> SourceConfig:
    """One rule with the operator (``contracts.pvc_model_path``, ``builders.model_path.source_model_path``): ``$MTP_MODEL_PATH`` when
    set, else the same value derived from the spec. For pvc and path it is a local directory (a relative
    path is relative to the job file); for huggingFace it is the Hub repo id."""
    src = job.spec.model.source
    kind = src.kind()
    if kind == "tiny":
        return SourceConfig(kind="tiny")
    env = os.environ.get(MODEL_PATH_ENV) or None
    if kind == "hugging_face":
        assert src.hugging_face is not None
        return SourceConfig(kind="huggingFace", repo_id=env or src.hugging_face.id, revision=src.hugging_face.revision)
    if kind == "pvc":
        assert src.pvc is not None
        return SourceConfig(kind="path", path=env or contracts.pvc_model_path(src.pvc.path))
    assert src.path is not None
    p = Path(env or src.path)
    return SourceConfig(kind="path", path=str(p if p.is_absolute() else base_dir / p))


def from_job(job: t.MTPTrainingJob, base_dir: Path | None = None, world_size: int | None = None) -> TrainerConfig:
    """Derive the trainer config from a validated job. Model dims for an imported checkpoint are
    filled in later from its config.json (``hf_import.model_config_from_dir``)."""
    base = base_dir or Path.cwd()
    spec = job.spec
    tr = spec.trainer
    hp = tr.hyperparameters
    strat = tr.strategy
    mtp_layers = spec.model.mtp_num_layers or 0
    mode = tr.mtp.training_mode
    if mode != t.MTPTrainingMode.DISABLED and mtp_layers < 1:
        raise ConfigError(
            "spec.model.mtpNumLayers must be >= 1 for trainer.mtp.trainingMode "
            f"{mode}; set it or use trainingMode: disabled"
        )
    ws = world_size or 1
    mp = strat.tensor_parallel_size * strat.pipeline_parallel_size
    if ws % mp != 0:
        raise ConfigError(
            f"spec.trainer.strategy: world size {ws} is not divisible by tensorParallelSize x "
            f"pipelineParallelSize = {mp}; change replicas/gpusPerReplica or the parallel layout"
        )
    dp = ws // mp
    accum = hp.gradient_accumulation_steps or max(hp.global_batch_size // (hp.micro_batch_size * dp), 1)
    source = _source(job, base)
    model = ModelConfig(family=str(spec.model.family), dtype=str(spec.model.dtype), mtp_num_layers=mtp_layers)
    if spec.model.source.tiny is not None:
        tiny = spec.model.source.tiny
        model = replace(
            model,
            hidden_size=tiny.hidden_size,
            num_layers=tiny.num_layers,
            num_attention_heads=tiny.num_attention_heads,
            num_key_value_heads=tiny.num_key_value_heads,
            head_dim=tiny.hidden_size // tiny.num_attention_heads,
            ffn_hidden_size=tiny.ffn_hidden_size,
            vocab_size=tiny.vocab_size,
            tie_word_embeddings=tiny.tie_word_embeddings,
            max_position_embeddings=max(hp.seq_length, 512),
        )
        if tiny.moe is not None:
            e = tiny.moe
            model = replace(
                model,
                num_experts=e.num_experts,
                num_experts_per_tok=e.num_experts_per_tok,
                moe_intermediate_size=e.moe_intermediate_size,
                shared_expert_intermediate_size=e.shared_expert_intermediate_size,
                norm_topk_prob=e.norm_topk_prob,
                moe_aux_loss_coeff=e.router_aux_loss_coef,
            )
    return TrainerConfig(
        model=model,
        source=source,
        mtp=MTPConfig(mode=str(mode), loss_scaling_factor=tr.mtp.loss_scaling_factor),
        optim=OptimConfig(
            learning_rate=hp.learning_rate,
            min_learning_rate=hp.min_learning_rate,
            warmup_steps=hp.warmup_steps,
            weight_decay=hp.weight_decay,
            clip_grad=hp.clip_grad,
            max_steps=hp.max_steps,
        ),
        data=DataConfig(
            train_files=tuple(_expand(f, tr.data.builtin_task) for f in tr.data.train_files),
            validation_files=tuple(_expand(f, tr.data.builtin_task) for f in tr.data.validation_files),
            validation_fraction=tr.data.validation_fraction,
            format=str(tr.data.format),
            prompt_key=tr.data.prompt_key,
            response_key=tr.data.response_key,
            seq_length=hp.seq_length,
            micro_batch_size=hp.micro_batch_size,
            grad_accum_steps=accum,
            seed=hp.seed,
            base_dir=str(base),
        ),
        parallel=ParallelConfig(
            strat.tensor_parallel_size,
            strat.pipeline_parallel_size,
            str(strat.recompute),
            strat.expert_parallel_size,
            strat.sequence_parallel and strat.tensor_parallel_size > 1,
            strat.distributed_optimizer,
        ),
        schedule=ScheduleConfig(save_steps=hp.save_steps, eval_steps=hp.eval_steps),
        metrics=MetricsConfig(port=tr.metrics_port, job=job.metadata.name, namespace=job.metadata.namespace or ""),
        seed=hp.seed,
        rl=_rl(job, dp) if spec.pipeline == t.Pipeline.RLVR else None,
    )


def _expand(name: str, task: t.BuiltinTask) -> str:
    from mtp_trainer.rl.tasks import expand_builtin

    return expand_builtin(name, task.difficulty, task.train_size, task.validation_size, task.seed)


def _rl(job: t.MTPTrainingJob, dp: int) -> RLConfig:
    spec = job.spec
    tr = spec.trainer
    g = tr.grpo
    rollout = spec.rollout or t.RolloutSpec()
    gen = rollout.generation
    if (g.prompts_per_step * g.samples_per_prompt) % (g.mini_batches * dp) != 0:
        raise ConfigError(
            f"spec.trainer.grpo: promptsPerStep x samplesPerPrompt = {g.prompts_per_step * g.samples_per_prompt} "
            f"must split evenly into miniBatches ({g.mini_batches}) x data-parallel ranks ({dp})"
        )
    warmup = None
    if tr.warmup is not None and tr.warmup.steps > 0:
        w = tr.warmup
        micro = min(w.micro_batch_size, w.global_batch_size)
        warmup = WarmupConfig(
            steps=w.steps,
            mode=str(w.training_mode),
            learning_rate=w.learning_rate,
            min_learning_rate=min(w.min_learning_rate, w.learning_rate),
            warmup_steps=w.warmup_steps,
            micro_batch_size=micro,
            grad_accum_steps=max(w.global_batch_size // (micro * dp), 1),
        )
    return RLConfig(
        prompt_key=tr.data.prompt_key,
        answer_key=tr.data.answer_key,
        response_key=tr.data.response_key,
        prompts_per_step=g.prompts_per_step,
        samples_per_prompt=g.samples_per_prompt,
        clip_low=g.clip_ratio_low,
        clip_high=g.clip_ratio_high,
        kl_coef=g.kl_coef,
        mini_batches=g.mini_batches,
        validation_prompts=g.validation_prompts,
        log_kl_to_initial=g.log_kl_to_initial or g.kl_coef > 0,
        rollout_replicas=rollout.replicas,
        rollout_drafts=rollout.speculative.method != t.SpeculativeMethod.NONE,
        max_tokens=gen.max_tokens,
        temperature=gen.temperature,
        top_p=gen.top_p,
        max_model_len=gen.max_model_len,
        served_model_name=job.metadata.name,
        reward=(spec.reward or t.RewardSpec()).math,
        warmup=warmup,
    )
