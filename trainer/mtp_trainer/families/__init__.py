"""Family registry: per ``spec.model.family``, the Megatron provider, the weight mapping and the
config.json writer. A new family (Qwen3.5 hybrid / MoE, DeepSeek-V3 on GPU) adds one module with
the same four functions and one entry here; nothing else in the trainer names a family.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import Tensor

from mtp_trainer.config import ConfigError, ModelConfig
from mtp_trainer.families import qwen3_next
from mtp_trainer.model_provider import ModelProvider


@dataclass(frozen=True)
class Family:
    name: str
    model_types: tuple[str, ...]  # config.json model_type values this family imports
    check: Callable[[ModelConfig], None]
    to_hf: Callable[[dict[str, Tensor], ModelConfig], dict[str, Tensor]]
    from_hf: Callable[[dict[str, Tensor], ModelConfig], dict[str, Tensor]]
    hf_config: Callable[[ModelConfig, dict[str, Any]], dict[str, Any]]
    model_config_from_hf: Callable[[dict[str, Any], str, str], ModelConfig]

    def provider(
        self,
        model: ModelConfig,
        tensor_parallel_size: int = 1,
        mtp_scale: float = 0.3,
        recompute: str = "none",
        expert_parallel_size: int = 1,
        sequence_parallel: bool = False,
        pipeline_parallel_size: int = 1,
    ) -> ModelProvider:
        # Every family shares the Qwen3.5/Qwen3-Next Megatron layout (dense or MoE, optionally hybrid).
        return ModelProvider(
            model,
            tensor_parallel_size,
            mtp_scale,
            recompute,
            expert_parallel_size,
            sequence_parallel,
            pipeline_parallel_size,
        )


REGISTRY: dict[str, Family] = {
    "qwen3_next": Family(
        name="qwen3_next",
        model_types=("qwen3_next",),
        check=qwen3_next.check,
        to_hf=lambda sd, m: qwen3_next.to_hf(sd, m, moe=False),
        from_hf=qwen3_next.from_hf,
        hf_config=qwen3_next.qwen3_next_config,
        model_config_from_hf=qwen3_next.model_config_from_hf,
    ),
    # Export-only variant for stock vLLM (no plugin): not an API value, never chosen on import.
    "qwen3_next_one_expert": Family(
        name="qwen3_next_one_expert",
        model_types=(),
        check=qwen3_next.check,
        to_hf=lambda sd, m: qwen3_next.to_hf(sd, m, moe=True),
        from_hf=qwen3_next.from_hf,
        hf_config=lambda m, special: qwen3_next.qwen3_next_config(m, special, one_expert=True),
        model_config_from_hf=qwen3_next.model_config_from_hf,
    ),
    "qwen3_5": Family(
        name="qwen3_5",
        model_types=("qwen3_5_text", "qwen3_5"),
        check=qwen3_next.check,
        to_hf=lambda sd, m: qwen3_next.to_hf(sd, m, moe=False, grouped=False),
        from_hf=qwen3_next.from_hf,
        hf_config=qwen3_next.qwen3_5_config,
        model_config_from_hf=qwen3_next.model_config_from_hf,
    ),
    # Mixture of experts, GPU flavour (Qwen3_5MoeForCausalLM). On CPU a MoE model exports as qwen3_next
    # (Qwen3NextForCausalLM with num_experts > 0), which vLLM CPU loads without torchvision.
    "qwen3_5_moe": Family(
        name="qwen3_5_moe",
        model_types=("qwen3_5_moe_text", "qwen3_5_moe"),
        check=qwen3_next.check,
        to_hf=lambda sd, m: qwen3_next.to_hf(sd, m, moe=False, grouped=False),
        from_hf=qwen3_next.from_hf,
        hf_config=qwen3_next.qwen3_5_moe_config,
        model_config_from_hf=qwen3_next.model_config_from_hf,
    ),
}


def get(name: str) -> Family:
    try:
        return REGISTRY[name]
    except KeyError:
        raise ConfigError(f"spec.model.family {name!r}: supported families are {', '.join(REGISTRY)}") from None


def for_model_type(model_type: str) -> Family:
    for fam in REGISTRY.values():
        if model_type in fam.model_types:
            return fam
    raise ConfigError(
        f"config.json model_type {model_type!r} is not a supported family ({', '.join(REGISTRY)}); "
        "import a Qwen3.5 / Qwen3-Next / Qwen3.5-MoE checkpoint"
    )
