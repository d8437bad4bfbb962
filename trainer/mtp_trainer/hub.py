"""A ``huggingFace`` model source, fetched by the trainer itself into ``<output-dir>/source-model``.

On each node, local rank 0 downloads the repo with ``huggingface_hub.snapshot_download`` into a
node-private ``.source-model.tmp-<node>``, writes the marker ``.mtp-download.json`` (repo id and
revision) there, and renames it to ``source-model``. The rename is atomic, so a shared output
volume sees one complete copy even when several nodes finish together; the other local ranks wait
for the marker. Before the weights, local rank 0 fetches config.json alone and runs the trainer's
model checks on it (``check_config``: MTP depth, layer types, experts, the tensor-parallel split), so a
checkpoint this release cannot train is refused before gigabytes move. A restart finds the marker and
downloads nothing. A failed download (no network,
unknown repo, gated repo) is bad input: the message names ``spec.model.source.huggingFace`` and the
fix, pre-staging the model on a PVC and using ``source.pvc``.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path

from mtp_trainer.config import ConfigError, SourceConfig

SOURCE_DIR = "source-model"
MARKER = ".mtp-download.json"
# Weights for other frameworks: the importer reads config.json, *.safetensors and the tokenizer only.
IGNORE_PATTERNS = ["*.bin", "*.pt", "*.pth", "*.gguf", "*.h5", "*.msgpack", "*.onnx", "original/*"]

Downloader = Callable[[str, str, Path], object]  # (repo_id, revision, local_dir)
CONFIG_FILE = "config.json"


def config_download(repo_id: str, revision: str, local_dir: Path) -> object:
    """config.json alone, into ``local_dir`` (what the pre-download check reads)."""
    from huggingface_hub import hf_hub_download

    return hf_hub_download(repo_id, CONFIG_FILE, revision=revision, local_dir=local_dir)


def snapshot_download(repo_id: str, revision: str, local_dir: Path) -> object:
    from huggingface_hub import snapshot_download as download

    return download(repo_id, revision=revision, local_dir=local_dir, ignore_patterns=IGNORE_PATTERNS)


def _marker(repo_id: str, revision: str) -> dict[str, str]:
    return {"repo_id": repo_id, "revision": revision}


def _complete(target: Path, repo_id: str, revision: str) -> bool:
    """True when ``target`` holds a finished download of this repo; an error when it holds another."""
    marker = target / MARKER
    if not marker.is_file():
        return False
    found = json.loads(marker.read_text())
    if found != _marker(repo_id, revision):
        raise ConfigError(
            f"spec.model.source.huggingFace is {repo_id}@{revision} but {target} already holds "
            f"{found.get('repo_id')}@{found.get('revision')} from an earlier run; use a fresh output directory "
            "(spec.trainer.volumes.checkpoints) for a different model"
        )
    return True


def _download(download: Downloader, repo_id: str, revision: str, tmp: Path) -> None:
    try:
        download(repo_id, revision, tmp)
    except Exception as exc:  # any failure to fetch (offline, unknown or gated repo) reads the same
        raise ConfigError(
            f"spec.model.source.huggingFace: could not download {repo_id}@{revision} ({exc}); the trainer "
            "needs network access to the Hub on its first start. Fix: pre-stage the model on a PVC and use "
            "spec.model.source.pvc instead"
        ) from exc


def fetch(
    src: SourceConfig,
    out_dir: Path,
    *,
    local_rank: int,
    node_rank: int = 0,
    download: Downloader = snapshot_download,
    sleep: Callable[[float], None] = time.sleep,
    check_config: Callable[[dict], None] | None = None,
    download_config: Downloader = config_download,
) -> SourceConfig:
    """Make a ``huggingFace`` source a local directory; other sources pass through unchanged.

    ``check_config`` (the trainer's model checks: MTP depth, layer types, experts, TP and pipeline split) runs on
    config.json, fetched alone first, before any weights are downloaded; it raises ConfigError."""
    if src.kind != "huggingFace":
        return src
    assert src.repo_id is not None
    repo_id, revision = src.repo_id, src.revision or "main"
    target = out_dir / SOURCE_DIR
    if local_rank == 0 and not _complete(target, repo_id, revision):
        tmp = out_dir / f".{SOURCE_DIR}.tmp-{node_rank}"
        tmp.mkdir(parents=True, exist_ok=True)  # kept across restarts: snapshot_download resumes into it
        if check_config is not None:
            _download(download_config, repo_id, revision, tmp)
            cfg_file = tmp / CONFIG_FILE
            if not cfg_file.is_file():
                raise ConfigError(f"spec.model.source.huggingFace: {repo_id}@{revision} has no {CONFIG_FILE}")
            check_config(json.loads(cfg_file.read_text()))
        _download(download, repo_id, revision, tmp)
        (tmp / MARKER).write_text(json.dumps(_marker(repo_id, revision)))
        try:
            os.rename(tmp, target)
        except OSError:
            if not _complete(target, repo_id, revision):  # lost a race only if another node won it
                raise
            shutil.rmtree(tmp, ignore_errors=True)
    while not _complete(target, repo_id, revision):
        sleep(2.0)  # local rank 0 is downloading; torchrun stops us if it fails
    return SourceConfig(kind="path", path=str(target))
