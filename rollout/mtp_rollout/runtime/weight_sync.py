"""Weight sync into a running vLLM server: the backend names and the plugin hook (no vLLM import).

The trainer pushes new policy weights, the MTP drafter included, into the rollout through vLLM
0.32's RL API (routes exist only with ``VLLM_SERVER_DEV_MODE=1``)::

    POST /pause?mode=wait
    POST /init_weight_transfer_engine      (once per server)
    POST /start_weight_update              -> the target model
    POST /update_weights                   {"update_info": {...}}
    POST /finish_weight_update
    POST /start_draft_weight_update        -> the MTP drafter
    POST /update_weights                   {"update_info": {...}}  (same payload)
    POST /finish_weight_update
    POST /update_weight_version            {"new_version": "<n>"}
    POST /reset_prefix_cache
    POST /resume

Transport is a vLLM *weight-transfer engine*, chosen by ``--weight-transfer-config``:

* ``mtp_shared_fs`` (ours, CPU and anywhere a directory is shared): the trainer writes safetensors
  to ``<sync_dir>/v<version>/`` (the checkpoint volume on a cluster) and the update payload names
  that directory; each worker reads the files and feeds them to the model's ``load_weights``,
  inside vLLM's layerwise reload so CPU kernels that pre-pack weights are rebuilt. Registered
  from the ``vllm.general_plugins`` entry point ``mtp_weight_sync`` (``register`` below), which
  vLLM runs in the API server, the engine core and every worker.
* ``nccl`` (vLLM's own, GPU): the same routes with vLLM's NCCL engine. Not testable here.

See docs/rollout.md "Weight sync".
"""

from __future__ import annotations

import json

from mtp_api import contracts

SHARED_FS = contracts.WEIGHT_SYNC_BACKEND
NCCL = "nccl"
BACKENDS = (SHARED_FS, NCCL)
ENGINE_MODULE = "mtp_rollout.runtime.weight_sync_engine"
ENGINE_CLASS = "SharedFSWeightTransferEngine"
ENV_DEV_MODE = "VLLM_SERVER_DEV_MODE"


def weight_transfer_config(backend: str = SHARED_FS) -> str:
    """The value of vLLM's ``--weight-transfer-config`` for ``backend``."""
    if backend not in BACKENDS:
        raise ValueError(f"weight-sync backend {backend!r}: expected one of {', '.join(BACKENDS)}")
    return json.dumps({"backend": backend}, separators=(",", ":"))


def register() -> None:
    """``vllm.general_plugins`` hook: register the shared-volume engine with vLLM (idempotent, lazy)."""
    from vllm.distributed.weight_transfer.factory import WeightTransferEngineFactory

    if SHARED_FS not in WeightTransferEngineFactory._registry:
        WeightTransferEngineFactory.register_engine(SHARED_FS, ENGINE_MODULE, ENGINE_CLASS)
