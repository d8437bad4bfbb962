"""vLLM weight-transfer engine ``mtp_shared_fs``: load safetensors from a shared directory.

Runs inside vLLM's workers (imported lazily by vLLM's engine factory after
``mtp_rollout.runtime.weight_sync.register``). One update payload is ``{"path": DIR}`` (every
``*.safetensors`` under DIR, sorted) or ``{"path": DIR, "files": [...]}``; the same payload serves
the target (after ``/start_weight_update``) and the MTP drafter (after
``/start_draft_weight_update``): each model's own ``load_weights`` keeps the names it owns (the
drafter keeps ``mtp.*``, the embedding and ``lm_head``).

Loading goes through vLLM's layerwise reload (as its IPC engine does): on CPU,
``process_weights_after_loading`` replaces linear weights by pre-packed oneDNN/SGL kernels and
empties ``layer.weight``, so copying into the parameters in place would change nothing that the
kernels read. ``initialize_layerwise_reload`` puts the layers back on their original shapes and
re-runs the processing once a layer's weights are all in.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from vllm.distributed.weight_transfer.base import (
    WeightTransferEngine,
    WeightTransferInitInfo,
    WeightTransferUpdateInfo,
)


@dataclass
class SharedFSInitInfo(WeightTransferInitInfo):
    """Nothing to rendezvous: the directory travels with each update."""


@dataclass
class SharedFSUpdateInfo(WeightTransferUpdateInfo):
    path: str
    files: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        root = Path(self.path)
        if not root.is_dir():
            raise ValueError(f"mtp_shared_fs: {root} is not a directory visible to the rollout")
        names = self.files or sorted(p.name for p in root.glob("*.safetensors"))
        if not names:
            raise ValueError(f"mtp_shared_fs: {root} has no *.safetensors files")
        self.files = names


def iter_tensors(root: Path, files: list[str]) -> Iterator[tuple[str, torch.Tensor]]:
    for name in files:
        with safe_open(str(root / name), framework="pt", device="cpu") as f:
            for key in f.keys():
                yield key, f.get_tensor(key)


class SharedFSWeightTransferEngine(WeightTransferEngine[SharedFSInitInfo, SharedFSUpdateInfo]):
    """Weights from safetensors files on a directory shared with the trainer."""

    init_info_cls = SharedFSInitInfo
    update_info_cls = SharedFSUpdateInfo
    supports_draft_weight_update = True

    def init_transfer_engine(self, init_info: SharedFSInitInfo) -> None:
        return None

    def start_weight_update(self) -> None:
        from vllm.model_executor.model_loader.reload import initialize_layerwise_reload

        initialize_layerwise_reload(self.model)

    def finish_weight_update(self) -> None:
        from vllm.model_executor.model_loader.reload import finalize_layerwise_reload

        finalize_layerwise_reload(self.model, self.model_config)

    def update_weights(self, update_info: dict[str, Any]) -> None:
        # The base class ends with torch.accelerator.synchronize(); a CPU load is synchronous.
        self.receive_weights(self.parse_update_info(update_info))

    def receive_weights(self, update_info: SharedFSUpdateInfo) -> None:
        from vllm.model_executor.model_loader.mtp_validation import disable_mtp_completeness_check

        with disable_mtp_completeness_check(), torch.no_grad():
            load_weights: Any = self.model.load_weights  # vLLM models define it; nn.Module does not
            load_weights(iter_tensors(Path(update_info.path), update_info.files))

    def shutdown(self) -> None:
        return None
