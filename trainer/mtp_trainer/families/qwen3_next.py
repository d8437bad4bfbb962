"""Qwen3.5 / Qwen3-Next (dense or mixture of experts, full or hybrid attention, one MTP layer) <-> Megatron GPTModel.

One tensor mapping, two config.json flavours:

- ``qwen3_5`` writes ``Qwen3_5ForCausalLM`` (``qwen3_5_text``), dense MLPs, for GPU images. vLLM's
  ``qwen3_5.py`` imports its VL stack, which needs torchvision; there is no CPU torchvision on
  PyPI, so this flavour is checked against transformers only.
- ``qwen3_next`` writes ``Qwen3NextForCausalLM`` with dense MLPs (``num_experts: 0``), which
  vLLM's Qwen3.5 is built on and which imports on CPU (drafter: ``qwen3_next_mtp``). Stock vLLM
  0.32 refuses a Qwen3-Next without MoE layers (``QwenNextMixtureOfExperts.set_moe_parameters``
  raises "No Qwen3Next layer found"); the rollout's vLLM plugin ``mtp_rollout.runtime.vllm_compat``
  (entry point ``vllm.general_plugins``) lifts that, and is installed wherever our vLLM runs.
- ``qwen3_next_one_expert`` (not an API value; ``hf_export`` can be asked for it) writes the same
  function in a form *stock* vLLM loads without any plugin: each dense SwiGLU MLP as an exactly
  equivalent one-expert MoE -- ``num_experts=1``, ``num_experts_per_tok=1``, ``norm_topk_prob``
  (the softmax over one logit is exactly 1.0), the dense weights as ``experts.0``, and a zero
  shared expert whose contribution is exactly 0 (``sigmoid(0) * 0``).

Import accepts all three. A real mixture of experts (``num_experts`` > 1: every layer, the MTP layer's
included, a ``MoELayer``) maps router / experts / gated shared expert one to one (``_moe_to_hf``), under
``qwen3_next`` (CPU-servable) or ``qwen3_5_moe`` (``Qwen3_5MoeForCausalLM``, GPU images).

Tensor correspondences (Megatron -> HF), per layer ``L`` (MTP layer 0 uses the same layer map):

- norms: HF computes ``x * (1 + w)``, Megatron ``x * w``: stored = Megatron - 1.
- ``linear_qkv`` rows per KV group ``[q heads | gate heads | k | v]`` -> ``q_proj`` rows per head
  ``[q_h | gate_h]``, ``k_proj``, ``v_proj``.
- ``linear_fc1 = [gate; up]`` -> ``gate_proj``, ``up_proj``; ``linear_fc2`` -> ``down_proj``.
- MTP: ``enorm``/``hnorm``/``eh_proj``/``final_layernorm`` -> ``mtp.pre_fc_norm_embedding`` /
  ``pre_fc_norm_hidden`` / ``fc`` / ``norm``; ``transformer_layer`` -> ``mtp.layers.0``.

Only one MTP layer maps exactly: with more, Qwen3-Next shares ``fc``, the pre-fc norms and
``mtp.norm`` across layers while Megatron keeps one set per depth.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from mtp_trainer.config import FULL_ATTENTION, LINEAR_ATTENTION, ConfigError, ModelConfig

SHARED_EXPERT_SIZE = 16  # the zero shared expert of the qwen3_next flavour: smallest size vLLM CPU ran

_NORMS = {
    "input_layernorm.weight": "input_layernorm.weight",
    "pre_mlp_layernorm.weight": "post_attention_layernorm.weight",
    "self_attention.q_layernorm.weight": "self_attn.q_norm.weight",
    "self_attention.k_layernorm.weight": "self_attn.k_norm.weight",
}


def check(m: ModelConfig) -> None:
    if m.mtp_num_layers > 1:
        raise ConfigError(
            f"spec.model.mtpNumLayers {m.mtp_num_layers}: the {m.family} export maps exactly one MTP layer "
            "(Qwen3-Next shares fc and norms across MTP layers); set mtpNumLayers to 1"
        )
    if m.is_moe() and m.shared_expert_intermediate_size < 1:
        raise ConfigError(
            f"shared_expert_intermediate_size {m.shared_expert_intermediate_size}: the {m.family} mixture of experts "
            "always has a gated shared expert; give it a size >= 1"
        )
    if m.is_moe() and m.family == "qwen3_5_moe" and not m.norm_topk_prob:
        raise ConfigError("qwen3_5_moe always renormalises the top-k router weights: norm_topk_prob must be true")
    if m.family == "qwen3_5" and m.is_moe():
        raise ConfigError(
            "spec.model.family qwen3_5 writes dense MLPs but the model is a mixture of experts; use qwen3_5_moe "
            "(GPU images) or qwen3_next (Qwen3NextForCausalLM with experts, which vLLM CPU loads)"
        )
    if m.family == "qwen3_5_moe" and not m.is_moe():
        raise ConfigError("spec.model.family qwen3_5_moe needs a mixture-of-experts model (num_experts > 0)")


# ------------------------------------------------------------------------------ layer tensors


def _split_qkv(w: Tensor, m: ModelConfig) -> tuple[Tensor, Tensor, Tensor]:
    ng, d = m.num_key_value_heads, m.head_dim
    npg = m.num_attention_heads // ng
    g = w.view(ng, (2 * npg + 2) * d, -1)
    q, gate, k, v = torch.split(g, [npg * d, npg * d, d, d], dim=1)
    q = q.reshape(m.num_attention_heads, d, -1)
    gate = gate.reshape(m.num_attention_heads, d, -1)
    q_proj = torch.cat([q, gate], dim=1).reshape(m.num_attention_heads * 2 * d, -1)
    return q_proj, k.reshape(ng * d, -1), v.reshape(ng * d, -1)


def _join_qkv(q_proj: Tensor, k: Tensor, v: Tensor, m: ModelConfig) -> Tensor:
    ng, d = m.num_key_value_heads, m.head_dim
    npg = m.num_attention_heads // ng
    qg = q_proj.view(m.num_attention_heads, 2 * d, -1)
    q, gate = qg[:, :d], qg[:, d:]
    parts = [
        q.reshape(ng, npg * d, -1),
        gate.reshape(ng, npg * d, -1),
        k.view(ng, d, -1),
        v.view(ng, d, -1),
    ]
    return torch.cat(parts, dim=1).reshape(ng * (2 * npg + 2) * d, -1)


def _gdn_sizes(m: ModelConfig) -> tuple[int, int, int, int]:
    """Rows of Megatron's ``in_proj``: [q k v (conv channels) | z | beta | alpha]."""
    nk, nv, dk, dv = m.linear_dims()
    return 2 * nk * dk + nv * dv, nv * dv, nv, nv


def _gdn_to_hf(sd: dict[str, Tensor], src: str, dst: str, m: ModelConfig, grouped: bool) -> dict[str, Tensor]:
    """Megatron ``GatedDeltaNet`` -> HF ``linear_attn``. ``grouped`` (Qwen3-Next): ``in_proj_qkvz`` and
    ``in_proj_ba`` with rows per key head ``[q_h | k_h | v_group | z_group]`` / ``[b_group | a_group]``;
    else (Qwen3.5) the four projections ``in_proj_qkv``, ``in_proj_z``, ``in_proj_b``, ``in_proj_a``."""
    a = src + "self_attention."
    o = dst + "linear_attn."
    qkv, z, b, alpha = torch.split(sd[a + "in_proj.weight"], list(_gdn_sizes(m)), dim=0)
    out = {
        o + "conv1d.weight": sd[a + "conv1d.weight"],
        o + "dt_bias": sd[a + "dt_bias"],
        o + "A_log": sd[a + "A_log"],
        o + "norm.weight": sd[a + "out_norm.weight"],  # x * w in both: no shift
        o + "out_proj.weight": sd[a + "out_proj.weight"],
    }
    if not grouped:
        out.update({o + "in_proj_qkv.weight": qkv, o + "in_proj_z.weight": z})
        out.update({o + "in_proj_b.weight": b, o + "in_proj_a.weight": alpha})
        return out
    nk, nv, dk, dv = m.linear_dims()
    r = nv // nk
    h = qkv.shape[-1]
    q, k, v = torch.split(qkv, [nk * dk, nk * dk, nv * dv], dim=0)
    parts = [q.view(nk, dk, h), k.view(nk, dk, h), v.view(nk, r * dv, h), z.view(nk, r * dv, h)]
    out[o + "in_proj_qkvz.weight"] = torch.cat(parts, dim=1).reshape(-1, h)
    out[o + "in_proj_ba.weight"] = torch.cat([b.view(nk, r, h), alpha.view(nk, r, h)], dim=1).reshape(-1, h)
    return out


def _gdn_from_hf(hf: dict[str, Tensor], src: str, dst: str, m: ModelConfig) -> dict[str, Tensor]:
    a = src + "linear_attn."
    o = dst + "self_attention."
    if a + "in_proj_qkvz.weight" in hf:
        nk, nv, dk, dv = m.linear_dims()
        r = nv // nk
        qkvz = hf[a + "in_proj_qkvz.weight"]
        h = qkvz.shape[-1]
        q, k, v, z = torch.split(qkvz.view(nk, -1, h), [dk, dk, r * dv, r * dv], dim=1)
        b, alpha = torch.split(hf[a + "in_proj_ba.weight"].view(nk, 2 * r, h), [r, r], dim=1)
        rows = [q, k, v, z, b, alpha]
        in_proj = torch.cat([x.reshape(-1, h) for x in rows], dim=0)
    else:
        names = ("in_proj_qkv", "in_proj_z", "in_proj_b", "in_proj_a")
        in_proj = torch.cat([hf[a + n + ".weight"] for n in names], dim=0)
    return {
        o + "in_proj.weight": in_proj,
        o + "conv1d.weight": hf[a + "conv1d.weight"],
        o + "dt_bias": hf[a + "dt_bias"],
        o + "A_log": hf[a + "A_log"],
        o + "out_norm.weight": hf[a + "norm.weight"],
        o + "out_proj.weight": hf[a + "out_proj.weight"],
    }


def gdn_tensor_parallel_layout(full: dict[str, Tensor], m: ModelConfig, tp: int, to_ranks: bool) -> dict[str, Tensor]:
    """Megatron's GatedDeltaNet under TP splits each rank's ``in_proj`` rows as ``[q_r|k_r|v_r|z_r|b_r|a_r]``
    and its ``conv1d`` channels as ``[q_r|k_r|v_r]``, so the concatenation of the shards (what
    ``sharding`` gathers and splits, contiguously) is that per-rank interleave, not the one-rank layout
    the mapping uses. ``to_ranks``: one-rank layout -> concatenated shards; else back. Identity for tp 1."""
    if tp == 1 or not m.is_hybrid():
        return full
    nk, nv, dk, dv = m.linear_dims()
    out = dict(full)
    for name, sizes in (
        ("in_proj.weight", [nk * dk, nk * dk, nv * dv, nv * dv, nv, nv]),
        ("conv1d.weight", [nk * dk, nk * dk, nv * dv]),
    ):
        for i in range(m.num_layers):
            key = f"decoder.layers.{i}.self_attention.{name}"
            if not m.is_linear(i) or key not in full:
                continue
            w = full[key]
            if to_ranks:
                parts = [x.chunk(tp, dim=0) for x in torch.split(w, sizes, dim=0)]
                out[key] = torch.cat([part[r] for r in range(tp) for part in parts], dim=0)
            else:
                blocks = [torch.split(b, [n // tp for n in sizes], dim=0) for b in w.chunk(tp, dim=0)]
                out[key] = torch.cat([blocks[r][j] for j in range(len(sizes)) for r in range(tp)], dim=0)
    return out


_LAYER_NORMS = ("input_layernorm.weight", "pre_mlp_layernorm.weight")


def _layer_to_hf(
    sd: dict[str, Tensor], src: str, dst: str, m: ModelConfig, moe: bool, linear: bool = False, grouped: bool = True
) -> dict[str, Tensor]:
    out: dict[str, Tensor] = {}
    for meg, hf in _NORMS.items():
        if not linear or meg in _LAYER_NORMS:
            out[dst + hf] = sd[src + meg] - 1.0
    if linear:
        out.update(_gdn_to_hf(sd, src, dst, m, grouped))
    else:
        q, k, v = _split_qkv(sd[src + "self_attention.linear_qkv.weight"], m)
        out[dst + "self_attn.q_proj.weight"] = q
        out[dst + "self_attn.k_proj.weight"] = k
        out[dst + "self_attn.v_proj.weight"] = v
        out[dst + "self_attn.o_proj.weight"] = sd[src + "self_attention.linear_proj.weight"]
    if m.is_moe():
        out.update(_moe_to_hf(sd, src + "mlp.", dst + "mlp.", m))
        return out
    gate, up = sd[src + "mlp.linear_fc1.weight"].chunk(2, dim=0)
    down = sd[src + "mlp.linear_fc2.weight"]
    if moe:
        h = m.hidden_size
        z = torch.zeros
        dt = down.dtype
        out[dst + "mlp.gate.weight"] = z(1, h, dtype=dt)
        out[dst + "mlp.experts.0.gate_proj.weight"] = gate
        out[dst + "mlp.experts.0.up_proj.weight"] = up
        out[dst + "mlp.experts.0.down_proj.weight"] = down
        out[dst + "mlp.shared_expert.gate_proj.weight"] = z(SHARED_EXPERT_SIZE, h, dtype=dt)
        out[dst + "mlp.shared_expert.up_proj.weight"] = z(SHARED_EXPERT_SIZE, h, dtype=dt)
        out[dst + "mlp.shared_expert.down_proj.weight"] = z(h, SHARED_EXPERT_SIZE, dtype=dt)
        out[dst + "mlp.shared_expert_gate.weight"] = z(1, h, dtype=dt)
    else:
        out[dst + "mlp.gate_proj.weight"] = gate
        out[dst + "mlp.up_proj.weight"] = up
        out[dst + "mlp.down_proj.weight"] = down
    return out


def _moe_to_hf(sd: dict[str, Tensor], src: str, dst: str, m: ModelConfig) -> dict[str, Tensor]:
    """Megatron ``MoELayer`` (router, ``SequentialMLP`` experts, gated ``SharedExpertMLP``) -> HF
    ``SparseMoeBlock`` (``gate``, ``experts.{e}.*``, ``shared_expert.*``, ``shared_expert_gate``)."""
    out = {dst + "gate.weight": sd[src + "router.weight"]}
    for e in range(m.num_experts):
        x = f"{src}experts.local_experts.{e}."
        gate, up = sd[x + "linear_fc1.weight"].chunk(2, dim=0)
        out[f"{dst}experts.{e}.gate_proj.weight"] = gate
        out[f"{dst}experts.{e}.up_proj.weight"] = up
        out[f"{dst}experts.{e}.down_proj.weight"] = sd[x + "linear_fc2.weight"]
    gate, up = sd[src + "shared_experts.linear_fc1.weight"].chunk(2, dim=0)
    out[dst + "shared_expert.gate_proj.weight"] = gate
    out[dst + "shared_expert.up_proj.weight"] = up
    out[dst + "shared_expert.down_proj.weight"] = sd[src + "shared_experts.linear_fc2.weight"]
    out[dst + "shared_expert_gate.weight"] = sd[src + "shared_experts.gate_weight"]
    return out


def _moe_from_hf(hf: dict[str, Tensor], src: str, dst: str, m: ModelConfig) -> dict[str, Tensor]:
    """HF ``SparseMoeBlock`` -> Megatron ``MoELayer``; per-expert tensors (``experts.{e}.gate_proj``) or
    the fused 3-D form (``experts.gate_up_proj`` [E, 2I, H], ``experts.down_proj`` [E, H, I])."""
    out = {dst + "router.weight": hf[src + "gate.weight"]}
    fused = src + "experts.gate_up_proj" in hf
    for e in range(m.num_experts):
        x = f"{dst}experts.local_experts.{e}."
        if fused:
            out[x + "linear_fc1.weight"] = hf[src + "experts.gate_up_proj"][e]
            out[x + "linear_fc2.weight"] = hf[src + "experts.down_proj"][e]
        else:
            y = f"{src}experts.{e}."
            out[x + "linear_fc1.weight"] = torch.cat([hf[y + "gate_proj.weight"], hf[y + "up_proj.weight"]], dim=0)
            out[x + "linear_fc2.weight"] = hf[y + "down_proj.weight"]
    shared = src + "shared_expert."
    out[dst + "shared_experts.linear_fc1.weight"] = torch.cat(
        [hf[shared + "gate_proj.weight"], hf[shared + "up_proj.weight"]], dim=0
    )
    out[dst + "shared_experts.linear_fc2.weight"] = hf[shared + "down_proj.weight"]
    out[dst + "shared_experts.gate_weight"] = hf[src + "shared_expert_gate.weight"]
    return out


def _layer_from_hf(
    hf: dict[str, Tensor], src: str, dst: str, m: ModelConfig, linear: bool = False
) -> dict[str, Tensor]:
    out: dict[str, Tensor] = {}
    for meg, name in _NORMS.items():
        if not linear or meg in _LAYER_NORMS:
            out[dst + meg] = hf[src + name] + 1.0
    if linear:
        out.update(_gdn_from_hf(hf, src, dst, m))
    else:
        out[dst + "self_attention.linear_qkv.weight"] = _join_qkv(
            hf[src + "self_attn.q_proj.weight"],
            hf[src + "self_attn.k_proj.weight"],
            hf[src + "self_attn.v_proj.weight"],
            m,
        )
        out[dst + "self_attention.linear_proj.weight"] = hf[src + "self_attn.o_proj.weight"]
    if m.is_moe():
        out.update(_moe_from_hf(hf, src + "mlp.", dst + "mlp.", m))
        return out
    if src + "mlp.gate_proj.weight" in hf:
        mlp = src + "mlp."
    else:
        mlp = src + "mlp.experts.0."
        shared = [k for k in hf if k.startswith(src + "mlp.shared_expert")]
        extra = [k for k in hf if k.startswith(src + "mlp.experts.") and not k.startswith(mlp)]
        if extra or any(hf[k].abs().max() > 0 for k in shared):
            raise ConfigError(
                f"{src}mlp is a real mixture of experts; only dense checkpoints (or the one-expert form this "
                "trainer exports) can be imported"
            )
    out[dst + "mlp.linear_fc1.weight"] = torch.cat([hf[mlp + "gate_proj.weight"], hf[mlp + "up_proj.weight"]], dim=0)
    out[dst + "mlp.linear_fc2.weight"] = hf[mlp + "down_proj.weight"]
    return out


# ------------------------------------------------------------------------------ whole model


def to_hf(sd: dict[str, Tensor], m: ModelConfig, moe: bool, grouped: bool = True) -> dict[str, Tensor]:
    """Full Megatron state dict -> HF tensors (``moe``: the one-expert form, see the module doc;
    ``grouped``: Qwen3-Next's fused linear-attention projections, else Qwen3.5's four).

    With ``m.vision_source`` (a vision-language source checkpoint) the text weights go under
    ``model.language_model.`` and the source's untouched vision tower is copied through."""
    check(m)
    vl = bool(m.vision_source)
    pre = "model.language_model." if vl else "model."
    out: dict[str, Tensor] = {pre + "embed_tokens.weight": sd["embedding.word_embeddings.weight"]}
    for i in range(m.num_layers):
        out.update(_layer_to_hf(sd, f"decoder.layers.{i}.", f"{pre}layers.{i}.", m, moe, m.is_linear(i), grouped))
    out[pre + "norm.weight"] = sd["decoder.final_layernorm.weight"] - 1.0
    if vl:
        out.update(vision_tensors(m.vision_source))
    # Always written: vLLM's Qwen3-Next loads lm_head from the file even when tied.
    out["lm_head.weight"] = sd["embedding.word_embeddings.weight" if m.tie_word_embeddings else "output_layer.weight"]
    if m.mtp_num_layers:
        p = "mtp.layers.0."
        out["mtp.pre_fc_norm_embedding.weight"] = sd[p + "enorm.weight"] - 1.0
        out["mtp.pre_fc_norm_hidden.weight"] = sd[p + "hnorm.weight"] - 1.0
        out["mtp.fc.weight"] = sd[p + "eh_proj.weight"]
        out["mtp.norm.weight"] = sd[p + "final_layernorm.weight"] - 1.0
        out.update(_layer_to_hf(sd, p + "transformer_layer.", "mtp.layers.0.", m, moe, False, grouped))
    return {k: v.contiguous() for k, v in out.items()}


VISION_PREFIX = "model.visual."


def vision_tensors(source: str) -> dict[str, Tensor]:
    """The vision tower of a vision-language checkpoint directory (``model.visual.*``), as stored."""
    from pathlib import Path

    from safetensors import safe_open

    out: dict[str, Tensor] = {}
    for f in sorted(Path(source).glob("*.safetensors")):
        with safe_open(str(f), framework="pt") as fh:
            for k in fh.keys():
                if k.startswith(VISION_PREFIX):
                    out[k] = fh.get_tensor(k)
    return out


def from_hf(hf: dict[str, Tensor], m: ModelConfig) -> dict[str, Tensor]:
    """HF tensors -> full Megatron state dict (parameters only). A vision-language checkpoint's text
    weights are read from under ``model.language_model.``; its vision tower is not imported (the
    export copies it through from the source, see :func:`to_hf`)."""
    check(m)
    pre = "model.language_model." if "model.language_model.embed_tokens.weight" in hf else "model."
    out: dict[str, Tensor] = {"embedding.word_embeddings.weight": hf[pre + "embed_tokens.weight"]}
    for i in range(m.num_layers):
        out.update(_layer_from_hf(hf, f"{pre}layers.{i}.", f"decoder.layers.{i}.", m, m.is_linear(i)))
    out["decoder.final_layernorm.weight"] = hf[pre + "norm.weight"] + 1.0
    if not m.tie_word_embeddings:
        out["output_layer.weight"] = hf["lm_head.weight"]
    if m.mtp_num_layers:
        if "mtp.fc.weight" not in hf:
            raise ConfigError(
                "the checkpoint has no mtp.* weights but spec.model.mtpNumLayers is "
                f"{m.mtp_num_layers}; set it to 0 (and trainingMode: disabled) or use a checkpoint with MTP"
            )
        p = "mtp.layers.0."
        out[p + "enorm.weight"] = hf["mtp.pre_fc_norm_embedding.weight"] + 1.0
        out[p + "hnorm.weight"] = hf["mtp.pre_fc_norm_hidden.weight"] + 1.0
        out[p + "eh_proj.weight"] = hf["mtp.fc.weight"]
        out[p + "final_layernorm.weight"] = hf["mtp.norm.weight"] + 1.0
        out.update(_layer_from_hf(hf, "mtp.layers.0.", p + "transformer_layer.", m))
    return out


# ------------------------------------------------------------------------------ config.json


def _common(m: ModelConfig, special: dict[str, Any]) -> dict[str, Any]:
    return {
        "vocab_size": m.vocab_size,
        "hidden_size": m.hidden_size,
        "intermediate_size": m.ffn_hidden_size,
        "num_hidden_layers": m.num_layers,
        "num_attention_heads": m.num_attention_heads,
        "num_key_value_heads": m.num_key_value_heads,
        "head_dim": m.head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": m.max_position_embeddings,
        "rms_norm_eps": m.norm_eps,
        "tie_word_embeddings": m.tie_word_embeddings,
        "rope_parameters": {
            "rope_type": "default",
            "rope_theta": m.rotary_base,
            "partial_rotary_factor": m.rotary_percent,
        },
        "partial_rotary_factor": m.rotary_percent,
        "attention_bias": False,
        "attention_dropout": 0.0,
        "layer_types": list(m.layer_types) or [FULL_ATTENTION] * m.num_layers,
        # Read by both implementations even when every layer is full attention.
        "linear_conv_kernel_dim": m.linear_conv_kernel_dim,
        "linear_key_head_dim": m.linear_dims()[2],
        "linear_value_head_dim": m.linear_dims()[3],
        "linear_num_key_heads": m.linear_dims()[0],
        "linear_num_value_heads": m.linear_dims()[1],
        "initializer_range": m.init_std,
        "use_cache": True,
        "dtype": m.dtype,
        "torch_dtype": m.dtype,
        **special,
    }


def qwen3_next_config(m: ModelConfig, special: dict[str, Any], one_expert: bool = False) -> dict[str, Any]:
    cfg = _common(m, special)
    cfg.update(
        architectures=["Qwen3NextForCausalLM"],
        model_type="qwen3_next",
        num_nextn_predict_layers=m.mtp_num_layers,
        num_experts=1 if one_expert else 0,
        num_experts_per_tok=1,
        norm_topk_prob=True,
        moe_intermediate_size=m.ffn_hidden_size,
        shared_expert_intermediate_size=SHARED_EXPERT_SIZE if one_expert else 0,
        decoder_sparse_step=1,
        mlp_only_layers=[],
        router_aux_loss_coef=0.0,
        output_router_logits=False,
    )
    if m.is_moe():  # every layer (and the MTP layer) sparse: decoder_sparse_step 1, no mlp_only_layers
        cfg.update(_moe_fields(m), norm_topk_prob=m.norm_topk_prob)
    return cfg


def _moe_fields(m: ModelConfig) -> dict[str, Any]:
    return {
        "num_experts": m.num_experts,
        "num_experts_per_tok": m.num_experts_per_tok,
        "moe_intermediate_size": m.moe_intermediate_size,
        "shared_expert_intermediate_size": m.shared_expert_intermediate_size,
        "router_aux_loss_coef": m.moe_aux_loss_coeff,
        "output_router_logits": False,
    }


def qwen3_5_moe_config(m: ModelConfig, special: dict[str, Any]) -> dict[str, Any]:
    """``Qwen3_5MoeForCausalLM`` (``qwen3_5_moe_text``): every layer sparse, top-k always renormalised,
    no dense ``intermediate_size``. The GPU flavour: vLLM's ``qwen3_5`` needs torchvision (no CPU build)."""
    cfg = _common(m, special)
    del cfg["intermediate_size"]
    cfg.update(
        architectures=["Qwen3_5MoeForCausalLM"],
        model_type="qwen3_5_moe_text",
        mtp_num_hidden_layers=m.mtp_num_layers,
        attn_output_gate=True,
        **_moe_fields(m),
    )
    return _with_vision(cfg, m, special)


def qwen3_5_config(m: ModelConfig, special: dict[str, Any]) -> dict[str, Any]:
    cfg = _common(m, special)
    cfg.update(
        architectures=["Qwen3_5ForCausalLM"],
        model_type="qwen3_5_text",
        mtp_num_hidden_layers=m.mtp_num_layers,
        attn_output_gate=True,
    )
    return _with_vision(cfg, m, special)


def _with_vision(cfg: dict[str, Any], m: ModelConfig, special: dict[str, Any]) -> dict[str, Any]:
    """A vision-language source (``m.vision_source``): its own config.json, with the trained text model's
    settings as ``text_config``; else ``cfg`` unchanged."""
    if not m.vision_source:
        return cfg
    import json
    from pathlib import Path

    vl = json.loads((Path(m.vision_source) / "config.json").read_text())
    text = {k: v for k, v in cfg.items() if k not in ("architectures", *special)}
    vl["text_config"] = {**(vl.get("text_config") or {}), **text}
    vl.update({k: v for k, v in special.items() if k in vl})
    return vl


def layer_types_from_hf(c: dict[str, Any]) -> tuple[str, ...]:
    """``layer_types``, else derived from ``full_attention_interval`` as transformers does (layer ``i`` is
    full attention when ``(i + 1) % interval == 0``); () when every layer is full attention."""
    n = int(c["num_hidden_layers"])
    types = c.get("layer_types")
    if types is None and c.get("full_attention_interval"):
        k = int(c["full_attention_interval"])
        types = [FULL_ATTENTION if (i + 1) % k == 0 else LINEAR_ATTENTION for i in range(n)]
    types = list(types or [])
    bad = sorted(set(types) - {FULL_ATTENTION, LINEAR_ATTENTION})
    if bad or (types and len(types) != n):
        raise ConfigError(
            f"spec.model.source: config.json layer_types {bad or len(types)} is not {n} entries of "
            "full_attention / linear_attention"
        )
    return tuple(types) if LINEAR_ATTENTION in types else ()


def model_config_from_hf(cfg: dict[str, Any], family: str, dtype: str) -> ModelConfig:
    """ModelConfig from a config.json of either flavour (or a VL wrapper's ``text_config``)."""
    c = cfg.get("text_config") or cfg
    types = layer_types_from_hf(c)
    experts = int(c.get("num_experts") or 0)
    moe = experts > 1 or str(c.get("model_type", "")).startswith("qwen3_5_moe")
    if moe and (int(c.get("decoder_sparse_step", 1)) != 1 or c.get("mlp_only_layers")):
        raise ConfigError(
            "spec.model.source: config.json mixes dense and sparse layers (decoder_sparse_step "
            f"{c.get('decoder_sparse_step')}, mlp_only_layers {c.get('mlp_only_layers')}); this trainer builds "
            "every layer as a mixture of experts"
        )
    if moe and not (
        int(c.get("moe_intermediate_size") or 0) > 0 and int(c.get("shared_expert_intermediate_size") or 0) > 0
    ):
        raise ConfigError(
            f"spec.model.source: config.json has num_experts {experts} but moe_intermediate_size "
            f"{c.get('moe_intermediate_size')} / shared_expert_intermediate_size {c.get('shared_expert_intermediate_size')}; "
            "this trainer builds the Qwen3-Next / Qwen3.5-MoE block (routed experts plus a gated shared expert), "
            "which needs both sizes"
        )
    rope = c.get("rope_parameters") or {}
    mtp = c.get("num_nextn_predict_layers", c.get("mtp_num_hidden_layers", 0)) or 0
    heads = int(c["num_attention_heads"])
    return ModelConfig(
        family=family,
        hidden_size=int(c["hidden_size"]),
        num_layers=int(c["num_hidden_layers"]),
        num_attention_heads=heads,
        num_key_value_heads=int(c["num_key_value_heads"]),
        head_dim=int(c.get("head_dim") or c["hidden_size"] // heads),
        ffn_hidden_size=int(c.get("intermediate_size") or c.get("moe_intermediate_size") or 0),
        vocab_size=int(c["vocab_size"]),
        tie_word_embeddings=bool(c.get("tie_word_embeddings", False)),
        mtp_num_layers=int(mtp),
        rotary_percent=float(rope.get("partial_rotary_factor", c.get("partial_rotary_factor", 0.25))),
        rotary_base=float(rope.get("rope_theta", c.get("rope_theta", 10000.0))),
        norm_eps=float(c.get("rms_norm_eps", 1e-6)),
        max_position_embeddings=int(c.get("max_position_embeddings", 4096)),
        dtype=dtype,
        init_std=float(c.get("initializer_range", 0.02)),
        layer_types=types,
        linear_conv_kernel_dim=int(c.get("linear_conv_kernel_dim", 4)),
        linear_key_head_dim=int(c.get("linear_key_head_dim", 0)) if types else 0,
        linear_value_head_dim=int(c.get("linear_value_head_dim", 0)) if types else 0,
        linear_num_key_heads=int(c.get("linear_num_key_heads", 0)) if types else 0,
        linear_num_value_heads=int(c.get("linear_num_value_heads", 0)) if types else 0,
        num_experts=experts if moe else 0,
        num_experts_per_tok=int(c.get("num_experts_per_tok", 1)) if moe else 1,
        moe_intermediate_size=int(c.get("moe_intermediate_size", 0)) if moe else 0,
        shared_expert_intermediate_size=int(c.get("shared_expert_intermediate_size", 0)) if moe else 0,
        norm_topk_prob=bool(c.get("norm_topk_prob", True)),
        moe_aux_loss_coeff=float(c.get("router_aux_loss_coef", 0.0)) if moe else 0.0,
    )
