"""The tiny layouts and batches the two-rank equivalence tests share (tensor, pipeline and expert
parallel): 4 query and 2 key/value heads so that TP 2 splits them, an MTP layer, float32."""

from __future__ import annotations

from dataclasses import replace

import torch

from mtp_trainer import mtp_modes
from mtp_trainer.config import FULL_ATTENTION, LINEAR_ATTENTION, ModelConfig
from mtp_trainer.data import causal_batch

DENSE = ModelConfig(
    family="qwen3_next",
    hidden_size=64,
    num_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=16,
    ffn_hidden_size=128,
    vocab_size=256,
    mtp_num_layers=1,
    max_position_embeddings=512,
)
HYBRID = replace(
    DENSE,
    family="qwen3_5",
    num_layers=3,
    layer_types=(LINEAR_ATTENTION, LINEAR_ATTENTION, FULL_ATTENTION),
    linear_num_key_heads=2,
    linear_num_value_heads=4,
    linear_key_head_dim=16,
    linear_value_head_dim=16,
)
MOE = replace(DENSE, num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32, shared_expert_intermediate_size=48)


def random_batches(count: int, seed: int = 0) -> list[mtp_modes.Batch]:
    """``count`` micro-batches of 2 random sequences of 32 scored tokens, the same for every caller."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(count):
        ids = torch.randint(2, DENSE.vocab_size, (2, 33), generator=g)
        out.append(causal_batch(ids, torch.ones(2, 32)))
    return out
