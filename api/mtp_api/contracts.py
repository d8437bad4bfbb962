"""Values that two components must agree on, written once (kubeflow/trainer's constants.go habit).

The operator sets these in pods, the trainer and the rollout read them; a rename here is a rename
everywhere. Only plain constants live here, so every package can import it without dependencies.
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
