"""Check up front that a checkpoint can draft with MTP, with a message a user can act on.

Why: with ``method: mtp`` and a checkpoint without MTP weights, vLLM fails deep in weight loading
(or silently drafts from random weights, accepting ~nothing). We read ``config.json`` and the
safetensors headers (a JSON header per file: no torch, no tensor data) and name what is missing.
On CPU we also check the attention head size, which vLLM's CPU attention supports only for a
fixed list and otherwise rejects at the first request with "Unsupported CPU attention configuration".
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

from mtp_api.validation import MTP_LAYER_KEYS, VLLM_CPU_HEAD_DIMS, mtp_layers_in_config

# Tensors the Qwen3-Next / Qwen3.5 MTP drafter loads (vllm qwen3_next_mtp.py / qwen3_5_mtp.py).
QWEN_MTP_SHARED = (
    "mtp.fc.weight",
    "mtp.pre_fc_norm_embedding.weight",
    "mtp.pre_fc_norm_hidden.weight",
    "mtp.norm.weight",
)


class CheckpointError(ValueError):
    """The checkpoint cannot be served as asked; the message says why and what to do."""


def safetensors_names(model_dir: Path) -> set[str]:
    """Tensor names of every ``*.safetensors`` file, read from the headers only."""
    names: set[str] = set()
    files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        raise CheckpointError(f"{model_dir}: no *.safetensors files; export the checkpoint in safetensors format")
    for f in files:
        with f.open("rb") as fh:
            (size,) = struct.unpack("<Q", fh.read(8))
            if size > 100 * 1024 * 1024:
                raise CheckpointError(f"{f}: safetensors header of {size} bytes; the file is corrupt")
            header = json.loads(fh.read(size))
        names.update(k for k in header if k != "__metadata__")
    return names


def _config(model_dir: Path) -> dict:
    path = model_dir / "config.json"
    if not path.is_file():
        raise CheckpointError(f"{model_dir}: no config.json; is this a Hugging Face checkpoint directory?")
    cfg = json.loads(path.read_text())
    return cfg.get("text_config", cfg) if isinstance(cfg.get("text_config"), dict) else cfg


def check_mtp_checkpoint(model_dir: str | Path) -> int:
    """The number of MTP layers of a local checkpoint, or a CheckpointError naming what is missing."""
    d = Path(model_dir)
    cfg = _config(d)
    n = mtp_layers_in_config(cfg) or 0
    if n < 1:
        raise CheckpointError(
            f"{d}/config.json declares no MTP layers ({' / '.join(MTP_LAYER_KEYS)} missing or 0), but "
            "rollout.speculative.method is mtp. Serve a checkpoint exported with its MTP head "
            "(trainer.mtp.trainingMode: joint or standalone), or set rollout.speculative.method: none."
        )
    names = safetensors_names(d)
    mtp_names = {x for x in names if x.startswith("mtp.")}
    if not mtp_names:
        raise CheckpointError(
            f"{d}: config.json declares {n} MTP layer(s) but the safetensors files hold no 'mtp.*' tensors "
            "(the MTP head was dropped at export). Re-export with the MTP weights, or set "
            "rollout.speculative.method: none."
        )
    missing = [x for x in QWEN_MTP_SHARED if x not in names]
    missing += [f"mtp.layers.{i}.*" for i in range(n) if not any(x.startswith(f"mtp.layers.{i}.") for x in names)]
    if missing:
        raise CheckpointError(f"{d}: MTP head incomplete, missing {', '.join(missing)}; re-export the checkpoint")
    return n


def check_cpu_head_size(model_dir: str | Path) -> None:
    cfg = _config(Path(model_dir))
    heads = cfg.get("num_attention_heads")
    head_dim = cfg.get("head_dim") or (cfg["hidden_size"] // heads if heads and cfg.get("hidden_size") else None)
    if head_dim is not None and head_dim not in VLLM_CPU_HEAD_DIMS:
        raise CheckpointError(
            f"{model_dir}: attention head size {head_dim} is not supported by vLLM's CPU attention "
            f"(supported: {', '.join(map(str, sorted(VLLM_CPU_HEAD_DIMS)))}); change hiddenSize / numAttentionHeads"
        )
