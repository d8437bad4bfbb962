"""Push the trainer's current weights, MTP head included, into every running vLLM rollout replica.

One protocol on every platform (vLLM 0.32's RL API; docs/rollout.md "Weight sync"):

1. every rank calls :meth:`WeightSync.sync` (``hf_export.hf_tensors`` gathers TP shards, a
   collective); rank 0 writes the HF-named tensors, the same mapping as the export, to
   ``<sync_dir>/v<version>/model.safetensors`` through a temporary sibling and one rename, so a
   replica never reads half a version;
2. rank 0 drives each replica: ``/pause`` → ``/init_weight_transfer_engine`` (first time only) →
   ``/start_weight_update`` → ``/update_weights`` → ``/finish_weight_update`` →
   ``/start_draft_weight_update`` → ``/update_weights`` → ``/finish_weight_update`` (the MTP
   drafter) → ``/update_weight_version`` → ``/reset_prefix_cache`` → ``/resume``.

The transfer engine is the rollout's ``--weight-transfer-config`` backend. ``mtp_shared_fs``
(``mtp_rollout.runtime.weight_sync_engine``) reads the directory named in the update payload, so
``sync_dir`` must be a path the rollout sees too: the checkpoint volume on a cluster, a local
directory for local runs. vLLM's ``nccl`` engine (GPU) needs a trainer-side broadcast that is
not wired here yet.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

import torch.distributed as dist
from safetensors.torch import save_file
from torch import nn

from mtp_api import contracts
from mtp_trainer import hf_export
from mtp_trainer.checkpoint import atomic_dir
from mtp_trainer.config import ModelConfig
from mtp_trainer.rl.rollout_client import RolloutClient

SHARED_FS = contracts.WEIGHT_SYNC_BACKEND  # the rollout registers the engine under this name
WEIGHTS_FILE = "model.safetensors"
# vLLM registers its speculative-decoding counters only when the engine has a drafter.
DRAFTER_METRIC = "vllm:spec_decode_num_drafts"


def version_dir(sync_dir: Path, version: int) -> Path:
    return Path(sync_dir) / f"v{version}"


class WeightSync:
    """Writes the policy (and MTP head) for each new version and loads it into every replica.

    ``version`` is the version the rollout serves now (0: the initial export it started from);
    each :meth:`sync` advances it by one and returns the new value. ``drafter=False`` skips the
    draft step (a rollout without MTP speculation has no drafter to update). ``keep`` versions
    stay on disk; older ones are removed once every replica has loaded a newer one.

    Whether a replica has a drafter is asked of the replica itself, each time its transfer engine
    is (re)initialised: with ``numSpeculativeTokens: auto`` the operator may restart replicas as
    plain engines (and back), and a plain vLLM answers the draft update with an error.
    """

    def __init__(
        self,
        model: nn.Module,
        m: ModelConfig,
        client: RolloutClient,
        sync_dir: str | Path,
        *,
        backend: str = SHARED_FS,
        drafter: bool = True,
        start_version: int = 0,
        keep: int = 2,
    ) -> None:
        if backend != SHARED_FS:
            raise NotImplementedError(
                f"weight-sync backend {backend!r}: only {SHARED_FS!r} is wired on the trainer side; "
                "vLLM's 'nccl' engine needs a trainer-side NCCL broadcast (docs/rollout.md, Weight sync)"
            )
        self.model = model
        self.m = m
        self.client = client
        self.sync_dir = Path(sync_dir)
        self.backend = backend
        self.drafter = drafter and m.mtp_num_layers > 0
        self.version = start_version
        self.keep = max(1, keep)
        self._initialised: set[str] = set()
        self._has_drafter: dict[str, bool] = {}
        self.last_timings: dict[str, float] = {}

    @property
    def is_driver(self) -> bool:
        return not dist.is_initialized() or dist.get_rank() == 0

    def write(self, version: int) -> Path:
        """Write ``version``'s tensors atomically; collective over all ranks; returns the directory."""
        tensors = {k: v.detach().contiguous() for k, v in hf_export.hf_tensors(self.model, self.m).items()}
        final = version_dir(self.sync_dir, version)
        with atomic_dir(final, is_writer=self.is_driver) as tmp:
            if self.is_driver:
                save_file(tensors, str(tmp / WEIGHTS_FILE), metadata={"format": "pt", "weight_version": str(version)})
        return final

    def sync(self) -> int:
        """Write the next version and load it into every replica (target, then drafter); returns it."""
        version = self.version + 1
        t0 = time.perf_counter()
        path = self.write(version)
        t1 = time.perf_counter()
        if self.is_driver:
            self.load(path, version)
            self._prune(version)
        self.version = version
        self.last_timings = {"write_s": t1 - t0, "load_s": time.perf_counter() - t1}
        return version

    def load(self, path: Path, version: int) -> None:
        """Drive the RL API on every replica for the files in ``path`` (rank 0 only)."""
        payload: dict[str, Any] = {"update_info": {"path": str(path.resolve()), "files": [WEIGHTS_FILE]}}
        c = self.client
        c.pause()
        try:
            c.each(lambda url: self._load_one(url, payload, version))
        finally:
            c.resume()

    def _load_one(self, url: str, payload: dict[str, Any], version: int) -> None:
        c = self.client
        if url not in self._initialised:
            self._has_drafter[url] = self.drafter and DRAFTER_METRIC in str(c.request(url, "/metrics", timeout_s=30))
            c.post(url, "/init_weight_transfer_engine", {"init_info": {}})
            self._initialised.add(url)
        steps = ["/start_weight_update"]
        if self._has_drafter.get(url, self.drafter):
            steps.append("/start_draft_weight_update")
        for start in steps:
            c.post(url, start)
            c.post(url, "/update_weights", payload)
            c.post(url, "/finish_weight_update")
        c.post(url, "/update_weight_version", {"new_version": str(version)})
        reset = c.post(url, "/reset_prefix_cache")
        if isinstance(reset, dict) and reset.get("success") is False:
            # Blocks still held (nothing should run while paused); one retry, then report.
            time.sleep(0.2)
            reset = c.post(url, "/reset_prefix_cache")
            if isinstance(reset, dict) and reset.get("success") is False:
                raise RuntimeError(f"{url}: vLLM refused to reset its prefix cache after weight version {version}")

    def reload(self, urls: list[str]) -> None:
        """Load the current version into ``urls`` only (rank 0): replicas that restarted or joined
        mid-run and came up serving the initial export. Their engines are initialised afresh."""
        path = version_dir(self.sync_dir, self.version)
        if not (path / WEIGHTS_FILE).is_file():
            raise RuntimeError(f"{path}: weight version {self.version} is no longer on disk; raise keep")
        payload: dict[str, Any] = {"update_info": {"path": str(path.resolve()), "files": [WEIGHTS_FILE]}}
        for url in urls:
            self._initialised.discard(url)
            self.client.post(url, "/pause", query={"mode": "wait"})
            try:
                self._load_one(url, payload, self.version)
            finally:
                self.client.post(url, "/resume")

    def _prune(self, current: int) -> None:
        for old in range(current - self.keep, 0, -1):
            d = version_dir(self.sync_dir, old)
            if not d.exists():
                break
            shutil.rmtree(d, ignore_errors=True)
