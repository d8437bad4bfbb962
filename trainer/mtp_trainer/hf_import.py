"""Import a Hugging Face checkpoint directory of a supported family (including ``mtp.*``).

``spec.model.source.path`` (or a PVC sub-path, or the directory ``hub.fetch`` downloaded a
huggingFace repo into) names the directory. The family is read from ``config.json``'s ``model_type``;
the job's ``spec.model.family`` only selects the *export* flavour.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import torch
from megatron.core import parallel_state as ps
from safetensors.torch import load_file
from torch import nn

from mtp_trainer import families
from mtp_trainer.config import ConfigError, ModelConfig
from mtp_trainer.families.qwen3_next import gdn_tensor_parallel_layout
from mtp_trainer.sharding import needed_names, shard_state_dict


def read_config(path: Path) -> dict:
    cfg_file = path / "config.json"
    if not cfg_file.is_file():
        raise ConfigError(
            f"spec.model.source: {path} has no config.json; point it at a Hugging Face checkpoint directory "
            "(config.json, *.safetensors, tokenizer files)"
        )
    cfg: dict = json.loads(cfg_file.read_text())
    return cfg


def model_config_from_dir(path: Path, export_family: str, dtype: str, max_positions: int | None = None) -> ModelConfig:
    cfg = read_config(path)
    c = cfg.get("text_config") or cfg
    fam = families.for_model_type(str(c.get("model_type", cfg.get("model_type", ""))))
    m = fam.model_config_from_hf(cfg, export_family, dtype)
    if max_positions:
        m = replace(m, max_position_embeddings=max(m.max_position_embeddings, max_positions))
    return m


def read_tensors(path: Path) -> dict[str, torch.Tensor]:
    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise ConfigError(f"spec.model.source: {path} has no *.safetensors files")
    out: dict[str, torch.Tensor] = {}
    for f in files:
        out.update(load_file(str(f)))
    return out


def load_into(model: nn.Module, path: Path, m: ModelConfig) -> None:
    """Copy the checkpoint's weights into ``model`` (this rank's TP shard of its pipeline stage)."""
    fam = families.get(m.family)
    full = fam.from_hf(read_tensors(path), m)
    if m.mtp_num_layers == 0:
        full = {k: v for k, v in full.items() if not k.startswith("mtp.")}
    missing = [k for k in needed_names(model) if k not in full]
    if m.tie_word_embeddings:
        missing = [k for k in missing if k != "output_layer.weight"]
    if missing:
        raise ConfigError(f"spec.model.source {path}: checkpoint lacks tensors for {missing[:5]}")
    tp = ps.get_tensor_model_parallel_world_size()
    full = gdn_tensor_parallel_layout(full, m, tp, to_ranks=True)
    sd = shard_state_dict(model, full)
    model.load_state_dict(sd, strict=False)
