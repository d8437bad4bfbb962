"""Build the Megatron-core ``GPTModel`` (with its MTP block) for the supported layout.

The layout is the dense, all-full-attention Qwen3.5 / Qwen3-Next decoder; every choice below
exists so that the Hugging Face / vLLM implementation computes the same function (docs/trainer.md):

- ``attention_output_gate``: Megatron's gated attention; ``linear_qkv`` rows per query group are
  ``[q heads | gate heads | k | v]`` and the output is ``attn * sigmoid(gate)``, as in Qwen3-Next.
- ``qk_layernorm`` with RMSNorm over the head dim, before RoPE, as ``q_norm`` / ``k_norm``.
- ``rotary_percent=0.25`` with non-interleaved halves = HF ``partial_rotary_factor`` 0.25.
- SwiGLU (``gated_linear_unit`` + silu) with ``linear_fc1 = [gate; up]``.
- Plain RMSNorm with weight ``w``; Qwen3-Next stores ``w - 1`` (it computes ``x * (1 + w)``), which
  the family mapping converts. (``layernorm_zero_centered_gamma`` would store ``w - 1`` natively
  but Megatron's torch-norm wrapper, the only norm without TE/apex, rejects it.)
- MTP: ``get_gpt_mtp_block_spec`` with the same local layer spec; its ``enorm``/``hnorm``/
  ``eh_proj``/``transformer_layer``/``final_layernorm`` map onto ``mtp.pre_fc_norm_embedding`` /
  ``pre_fc_norm_hidden`` / ``fc`` / ``layers.0`` / ``norm`` (concat order ``[embedding, hidden]``).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import torch
import torch.nn.functional as F
from megatron.core import parallel_state as ps
from megatron.core.models.gpt import GPTModel
from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec, get_gpt_mtp_block_spec
from megatron.core.transformer.spec_utils import ModuleSpec
from megatron.core.transformer.transformer_block import TransformerBlockSubmodules
from megatron.core.transformer.transformer_config import TransformerConfig

from mtp_trainer import cpu_compat, moe
from mtp_trainer.config import FULL_ATTENTION, LINEAR_ATTENTION, ConfigError, ModelConfig
from mtp_trainer.norms import with_sequence_parallel_norms

# spec.trainer.strategy.recompute -> TransformerConfig: "full" recomputes each transformer layer (and
# the MTP layer) in backward, "selective" only the core attention (Megatron's default module list).
RECOMPUTE: dict[str, dict[str, Any]] = {
    "none": {},
    "selective": {"recompute_granularity": "selective"},
    "full": {"recompute_granularity": "full", "recompute_method": "uniform", "recompute_num_layers": 1},
}


@dataclass(frozen=True)
class ModelProvider:
    """``provide()`` returns a fresh GPTModel; the parallel state must already be initialised."""

    model: ModelConfig
    tensor_parallel_size: int = 1
    mtp_loss_scaling_factor: float = 0.3
    recompute: str = "none"  # spec.trainer.strategy.recompute: none | selective | full
    expert_parallel_size: int = 1
    # spec.trainer.strategy.sequenceParallel, applied with tensorParallelSize > 1 (Megatron refuses it
    # without TP); the norms are norms.SequenceParallelRMSNorm, whose weights the TP finish sums.
    sequence_parallel: bool = False
    # spec.trainer.strategy.pipelineParallelSize: this rank builds its stage only (pipeline.py runs the
    # schedule); the MTP block and a copy of the embedding sit on the last stage, as Megatron places them.
    pipeline_parallel_size: int = 1

    def transformer_config(self) -> TransformerConfig:
        m = self.model
        self.check()
        dtype = m.torch_dtype()
        kwargs: dict[str, Any] = {
            "num_layers": m.num_layers,
            "hidden_size": m.hidden_size,
            "ffn_hidden_size": m.ffn_hidden_size,
            "num_attention_heads": m.num_attention_heads,
            "num_query_groups": m.num_key_value_heads,
            "kv_channels": m.head_dim,
            "normalization": "RMSNorm",
            "layernorm_epsilon": m.norm_eps,
            "qk_layernorm": True,
            "attention_output_gate": True,
            "gated_linear_unit": True,
            "activation_func": F.silu,
            "add_bias_linear": False,
            "add_qkv_bias": False,
            "hidden_dropout": 0.0,
            "attention_dropout": 0.0,
            "init_method_std": m.init_std,
            "tensor_model_parallel_size": self.tensor_parallel_size,
            "pipeline_model_parallel_size": self.pipeline_parallel_size,
            "pipeline_dtype": dtype,  # of the hidden states sent between stages (pipeline.py)
            "sequence_parallel": self.sequence_parallel and self.tensor_parallel_size > 1,
            "params_dtype": dtype,
            "bf16": dtype == torch.bfloat16,
            "fp16": dtype == torch.float16,
            "mtp_num_layers": m.mtp_num_layers if m.mtp_num_layers > 0 else None,
            # mtp_modes applies the factor itself; kept equal so GPTModel.forward computes the same loss.
            "mtp_loss_scaling_factor": self.mtp_loss_scaling_factor,
        }
        kwargs.update(RECOMPUTE[self.recompute])
        if m.is_moe():
            kwargs.update(self.moe_config())
        if m.is_hybrid():
            nk, nv, dk, dv = m.linear_dims()
            kwargs.update(
                linear_conv_kernel_dim=m.linear_conv_kernel_dim,
                linear_key_head_dim=dk,
                linear_value_head_dim=dv,
                linear_num_key_heads=nk,
                linear_num_value_heads=nv,
                # The pure-torch Gated DeltaNet path (no fla/causal-conv1d kernels): cpu_compat 7.
                deterministic_mode=cpu_compat.gated_delta_net_shims(),
            )
        if cpu_compat.on_cpu():
            kwargs.update(cpu_compat.cpu_transformer_config_overrides())
        return TransformerConfig(**kwargs)

    def moe_config(self) -> dict[str, Any]:
        """Megatron's MoE settings for the Qwen3-Next / Qwen3.5-MoE block (HF names in ModelConfig):

        - router: softmax scores; ``norm_topk_prob`` (HF: softmax over all experts, top-k, divide by their
          sum) equals Megatron's default top-k-then-softmax over the k logits; without it HF keeps the
          un-renormalised top-k of the full softmax, which is ``moe_router_pre_softmax``;
        - experts: the local ``SequentialMLP`` (no grouped GEMM), SwiGLU like the dense MLP;
        - the shared expert with ``moe_shared_expert_gate``: ``sigmoid(x @ gate_weight.T) * mlp(x)``;
        - the Switch load-balancing loss (``aux_loss``) with ``moe_aux_loss_coeff``, added to the
          gradients by Megatron's ``MoEAuxLossAutoScaler`` (``moe.set_aux_loss_scale``).
        """
        m = self.model
        shared = m.shared_expert_intermediate_size
        cpu_compat.moe_shims()
        return {
            "num_moe_experts": m.num_experts,
            "moe_router_topk": m.num_experts_per_tok,
            "moe_ffn_hidden_size": m.moe_intermediate_size,
            "moe_shared_expert_intermediate_size": shared or None,
            "moe_shared_expert_gate": bool(shared),
            "moe_router_score_function": "softmax",
            "moe_router_pre_softmax": not m.norm_topk_prob,
            "moe_router_load_balancing_type": "aux_loss",
            "moe_aux_loss_coeff": m.moe_aux_loss_coeff,
            "moe_grouped_gemm": False,
            # allgather: the alltoall dispatcher creates a torch.cuda.Stream at construction (no CPU path).
            "moe_token_dispatcher_type": "allgather",
            "expert_model_parallel_size": self.expert_parallel_size,
        }

    def check(self) -> None:
        """The layout's refusals (head grouping, the tensor-parallel split, rotary halves); builds nothing."""
        m = self.model
        tp = self.tensor_parallel_size
        if m.num_attention_heads % m.num_key_value_heads:
            raise ConfigError("model numAttentionHeads must be a multiple of numKeyValueHeads")
        if m.num_key_value_heads % tp:
            raise ConfigError(
                f"spec.trainer.strategy.tensorParallelSize {tp} must divide the key/value heads "
                f"({m.num_key_value_heads}); lower tensorParallelSize"
            )
        if m.vocab_size % tp:
            raise ConfigError(f"vocab size {m.vocab_size} must be divisible by tensorParallelSize {tp}")
        if m.layer_types and len(m.layer_types) != m.num_layers:
            raise ConfigError(f"layer_types has {len(m.layer_types)} entries for {m.num_layers} layers")
        bad = sorted(set(m.layer_types) - {LINEAR_ATTENTION, FULL_ATTENTION})
        if bad:
            raise ConfigError(f"layer_types {bad}: this trainer builds linear_attention and full_attention layers")
        if m.is_hybrid():
            nk, nv, _, _ = m.linear_dims()
            if nv % nk:
                raise ConfigError(f"linear_num_value_heads {nv} must be a multiple of linear_num_key_heads {nk}")
            if nk % tp or nv % tp:
                raise ConfigError(
                    f"spec.trainer.strategy.tensorParallelSize {tp} must divide the linear-attention key and value "
                    f"heads ({nk}, {nv}); lower tensorParallelSize"
                )
        if m.is_moe():
            if not 1 <= m.num_experts_per_tok <= m.num_experts:
                raise ConfigError(
                    f"num_experts_per_tok {m.num_experts_per_tok} must be between 1 and num_experts {m.num_experts}"
                )
            if m.moe_intermediate_size < 1:
                raise ConfigError("moe_intermediate_size must be >= 1 for a mixture-of-experts model")
            if m.num_experts % self.expert_parallel_size:
                raise ConfigError(
                    f"spec.trainer.strategy.expertParallelSize {self.expert_parallel_size} must divide the "
                    f"{m.num_experts} experts; lower expertParallelSize"
                )
            if tp > 1 and self.expert_parallel_size > 1:
                raise ConfigError(
                    f"spec.trainer.strategy.expertParallelSize {self.expert_parallel_size} with tensorParallelSize {tp}: "
                    "experts split over expert-parallel ranks at tensorParallelSize 1 only; set one of them to 1"
                )
            if tp > 1 and not self.sequence_parallel:
                raise ConfigError(
                    f"spec.trainer.strategy.sequenceParallel: a mixture-of-experts model at tensorParallelSize {tp} "
                    "needs sequence parallel (Megatron's MoE layer refuses to train without it); set it to true"
                )
        pp = self.pipeline_parallel_size
        if pp > 1 and m.num_layers % pp:
            raise ConfigError(
                f"spec.trainer.strategy.pipelineParallelSize {pp} must divide the model's {m.num_layers} layers "
                "(each stage builds the same number); pick a divisor of the layer count"
            )
        rot = int(m.head_dim * m.rotary_percent)
        if rot % 2:
            raise ConfigError(f"head dim {m.head_dim} x rotary 0.25 = {rot} must be even; use a head dim multiple of 8")

    def stage_layers(self, pp_rank: int) -> range:
        """The global layer indices pipeline stage ``pp_rank`` builds (an even split, checked above)."""
        per = self.model.num_layers // self.pipeline_parallel_size
        return range(pp_rank * per, (pp_rank + 1) * per)

    def decoder_spec(self, layer_spec: ModuleSpec, pp_rank: int = 0) -> ModuleSpec | TransformerBlockSubmodules:
        """One spec per layer of this pipeline stage and the final norm, spelled out (so that ``norms``
        can swap every norm; Megatron would add its own final norm to a bare layer spec, and builds every
        spec in a list, so the list is this stage's slice). All full attention: the local layer spec per
        layer. Hybrid: the linear ones with Megatron's ``GatedDeltaNet`` (local, non-TE submodules; the
        input norm stays a separate module, as in the full-attention layers and in Hugging Face's
        layout), chosen by the global layer index."""
        m = self.model
        layers = self.stage_layers(pp_rank)
        if not m.is_hybrid():
            return TransformerBlockSubmodules(
                layer_specs=[layer_spec] * len(layers), layer_norm=layer_spec.submodules.input_layernorm
            )
        from megatron.core.ssm.gated_delta_net import GatedDeltaNet, GatedDeltaNetSubmodules
        from megatron.core.tensor_parallel import ColumnParallelLinear, RowParallelLinear

        subs = layer_spec.submodules
        norm = subs.input_layernorm
        gdn = ModuleSpec(
            module=GatedDeltaNet,
            submodules=GatedDeltaNetSubmodules(in_proj=ColumnParallelLinear, out_norm=norm, out_proj=RowParallelLinear),
        )
        linear = ModuleSpec(module=layer_spec.module, submodules=replace(subs, self_attention=gdn))
        specs = [linear if m.is_linear(i) else layer_spec for i in layers]
        return TransformerBlockSubmodules(layer_specs=specs, layer_norm=norm)

    def provide(self) -> GPTModel:
        cpu_compat.apply()
        if self.model.is_moe():
            moe.reset_tracker()  # sized per model by Megatron on first use
        cfg = self.transformer_config()
        layer_spec = get_gpt_layer_local_spec(
            num_experts=self.model.num_experts or None,
            moe_grouped_gemm=False,
            qk_layernorm=True,
            normalization="RMSNorm",
        )
        pp_rank = ps.get_pipeline_model_parallel_rank() if self.pipeline_parallel_size > 1 else 0
        # The MTP layer is a full-attention layer in Qwen3.5 / Qwen3-Next, whatever the trunk's last layer is.
        # Megatron's spec function returns None on every stage but the last.
        mtp_spec = get_gpt_mtp_block_spec(cfg, layer_spec, use_transformer_engine=False) if cfg.mtp_num_layers else None
        with cpu_compat.tensor_cuda_is_identity():
            model = GPTModel(
                config=cfg,
                transformer_layer_spec=with_sequence_parallel_norms(self.decoder_spec(layer_spec, pp_rank)),
                vocab_size=self.model.vocab_size,
                max_sequence_length=self.model.max_position_embeddings,
                pre_process=pp_rank == 0,
                post_process=pp_rank == self.pipeline_parallel_size - 1,
                parallel_output=True,
                share_embeddings_and_output_weights=self.model.tie_word_embeddings,
                position_embedding_type="rope",
                rotary_percent=self.model.rotary_percent,
                rotary_base=int(self.model.rotary_base),
                mtp_block_spec=with_sequence_parallel_norms(mtp_spec),
            )
        if not cpu_compat.on_cpu():
            model = model.cuda()
        return model
