"""Export to a Hugging Face checkpoint directory that transformers and vLLM (with the MTP drafter)
load: ``model.safetensors``, ``config.json``, ``generation_config.json`` and the tokenizer.

The family decides the tensor names and the config flavour (``families/``). The directory is
written to a temporary sibling and renamed into place, so a reader (the rollout's reload, or a
``vllm serve`` on the shared volume) never sees half an export.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from megatron.core import parallel_state as ps
from safetensors.torch import save_file
from torch import nn

from mtp_trainer import families
from mtp_trainer.checkpoint import atomic_dir
from mtp_trainer.config import ModelConfig
from mtp_trainer.families.qwen3_next import gdn_tensor_parallel_layout
from mtp_trainer.sharding import full_state_dict
from mtp_trainer.tokenizer import im_end_id


def _special_ids(tok: Any) -> dict[str, Any]:
    eos = [i for i in (im_end_id(tok), tok.eos_token_id) if i is not None]
    return {
        "bos_token_id": tok.bos_token_id,
        "eos_token_id": eos[0] if eos else None,
        "pad_token_id": tok.pad_token_id,
    }


def hf_tensors(model: nn.Module, m: ModelConfig) -> dict[str, torch.Tensor]:
    """The exported tensors (every rank must call this: TP shards are gathered)."""
    fam = families.get(m.family)
    tp = ps.get_tensor_model_parallel_world_size()
    full = gdn_tensor_parallel_layout(full_state_dict(model), m, tp, to_ranks=False)
    return {k: v.to(m.torch_dtype()) for k, v in fam.to_hf(full, m).items()}


def export(model: nn.Module, m: ModelConfig, tokenizer: Any, out_dir: Path) -> Path:
    """Write the export to ``out_dir`` atomically; collective over all ranks."""
    tensors = hf_tensors(model, m)
    is_main = not dist.is_initialized() or dist.get_rank() == 0
    with atomic_dir(out_dir, is_writer=is_main) as tmp:
        if is_main:
            save_file(tensors, str(tmp / "model.safetensors"), metadata={"format": "pt"})
            special = _special_ids(tokenizer)
            cfg = families.get(m.family).hf_config(m, special)
            (tmp / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
            eos = [i for i in (im_end_id(tokenizer), tokenizer.eos_token_id) if i is not None]
            gen = {"eos_token_id": eos, "pad_token_id": tokenizer.pad_token_id, "do_sample": False}
            (tmp / "generation_config.json").write_text(json.dumps(gen, indent=2) + "\n")
            tokenizer.save_pretrained(str(tmp))
    return out_dir
