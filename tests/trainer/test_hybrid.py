"""The Qwen3.5 hybrid layout: Gated DeltaNet (linear-attention) layers beside gated full attention,
with the MTP layer, on CPU (cpu_compat workaround 7).

References are independent of the trainer: transformers' own ``Qwen3_5ForCausalLM`` /
``Qwen3NextForCausalLM`` (pure-torch GDN) on the exported checkpoint, and the import of that
checkpoint back into a fresh Megatron model.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM

from mtp_trainer import families, hf_export, hf_import, mtp_modes
from mtp_trainer.config import FULL_ATTENTION, LINEAR_ATTENTION, ConfigError, ModelConfig
from mtp_trainer.data import causal_batch
from mtp_trainer.families.qwen3_next import model_config_from_hf

from .conftest import build_model

L, F = LINEAR_ATTENTION, FULL_ATTENTION
HYBRID = ModelConfig(
    family="qwen3_5",
    hidden_size=64,
    num_layers=4,
    num_attention_heads=2,
    num_key_value_heads=1,
    head_dim=32,
    ffn_hidden_size=128,
    vocab_size=256,
    mtp_num_layers=1,
    max_position_embeddings=512,
    layer_types=(L, L, L, F),
    linear_num_key_heads=2,
    linear_num_value_heads=4,
    linear_key_head_dim=16,
    linear_value_head_dim=16,
)
# float32 logits; the two pure-torch chunked delta rules differ only in summation order, and that
# rounding depends on the CPU's kernels: max |diff| 1.7e-6 on one machine, 3.3e-5 (19 of 38400
# logits above 2e-5) on a 2-core AMD EPYC. A mapping error (a swapped gate, a missing w - 1, a
# wrong head order) moves logits by 1e-2 or more.
LOGIT_ATOL = 1e-4


def _perturbed(m: ModelConfig, seed: int) -> torch.nn.Module:
    """A model whose every weight differs from its init (norms away from 1, so a missing w-1 shows)."""
    model = build_model(m, seed=seed)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    return model.eval()


def _export(model: torch.nn.Module, m: ModelConfig, out: Path) -> Path:
    out.mkdir(parents=True)
    save_file(hf_export.hf_tensors(model, m), str(out / "model.safetensors"), metadata={"format": "pt"})
    special = {"bos_token_id": None, "eos_token_id": 1, "pad_token_id": 0}
    (out / "config.json").write_text(json.dumps(families.get(m.family).hf_config(m, special)))
    return out


@torch.no_grad()
def _logits(model: torch.nn.Module, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    tokens = torch.cat([ids, torch.zeros(1, 1, dtype=ids.dtype)], dim=1)
    batch = causal_batch(tokens, torch.ones(1, ids.shape[1]))
    out = mtp_modes.forward(model, batch, mtp_modes.JOINT, 0.3, keep_logits=True)
    assert out.lm_logits is not None
    return out.lm_logits[:, 0], out.mtp_logits[0][:, 0]


@pytest.mark.parametrize(
    ("family", "arch"), [("qwen3_5", "Qwen3_5ForCausalLM"), ("qwen3_next", "Qwen3NextForCausalLM")]
)
def test_hybrid_logits_match_transformers(dist_env: object, tmp_path: Path, family: str, arch: str) -> None:
    m = replace(HYBRID, family=family)
    model = _perturbed(m, seed=3)
    names = dict(model.named_parameters())
    assert "decoder.layers.0.self_attention.in_proj.weight" in names  # a Gated DeltaNet layer
    assert "decoder.layers.3.self_attention.linear_qkv.weight" in names  # the full-attention one
    out = _export(model, m, tmp_path / family)
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["layer_types"] == list(HYBRID.layer_types)
    hf = AutoModelForCausalLM.from_pretrained(str(out), dtype=torch.float32).eval()
    assert type(hf).__name__ == arch
    ids = torch.randint(2, m.vocab_size, (1, 150), generator=torch.Generator().manual_seed(0))  # > one 64-chunk
    ref = _logits(model, ids)[0]
    with torch.no_grad():
        got = hf(ids).logits[0]
    diff = float((got - ref).abs().max())
    print(f"{family}: max |logit diff| {diff:.3g}")
    torch.testing.assert_close(got, ref, atol=LOGIT_ATOL, rtol=0)

    # Import back: the same tensors and the same function.
    m2 = model_config_from_hf(cfg, family, "float32")
    assert m2.layer_types == HYBRID.layer_types and m2.linear_dims() == HYBRID.linear_dims()
    again = build_model(replace(m2, max_position_embeddings=512), seed=99)
    hf_import.load_into(again, out, m2)
    for name, t in again.state_dict().items():
        if "_extra_state" not in name:
            torch.testing.assert_close(t, model.state_dict()[name], atol=1e-7, rtol=0, msg=name)


def test_hybrid_is_causal_and_trains(dist_env: object) -> None:
    """Later tokens never change earlier outputs; a few AdamW steps fit a fixed batch (trunk and MTP)."""
    model = build_model(HYBRID, seed=5)
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(2, HYBRID.vocab_size, (2, 65), generator=g)
    a, _ = _logits(model.eval(), ids[:1, :40])
    changed = ids[:1, :40].clone()
    changed[0, 30:] = (changed[0, 30:] + 1) % HYBRID.vocab_size
    b, _ = _logits(model, changed)
    torch.testing.assert_close(a[:30], b[:30], atol=0, rtol=0)

    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    batch = causal_batch(ids, torch.ones(2, 64))
    losses = []
    for _ in range(30):
        opt.zero_grad()
        out = mtp_modes.forward(model, batch, mtp_modes.JOINT, 0.3)
        out.loss.backward()
        assert model.decoder.layers[0].self_attention.A_log.grad is not None
        opt.step()
        losses.append((float(out.lm_loss), float(out.mtp_losses[0])))
    print("hybrid lm/mtp loss first, last:", losses[0], losses[-1])
    assert losses[-1][0] < losses[0][0] - 2.0 and losses[-1][1] < losses[0][1] - 1.0


def test_layer_types_from_full_attention_interval() -> None:
    base = {
        "model_type": "qwen3_5_text",
        "hidden_size": 64,
        "num_hidden_layers": 8,
        "num_attention_heads": 2,
        "num_key_value_heads": 1,
        "intermediate_size": 128,
        "vocab_size": 256,
        "full_attention_interval": 4,
        "linear_num_key_heads": 2,
        "linear_num_value_heads": 4,
        "linear_key_head_dim": 16,
        "linear_value_head_dim": 16,
    }
    m = model_config_from_hf(base, "qwen3_5", "float32")
    assert m.layer_types == (L, L, L, F, L, L, L, F)  # transformers' rule: full when (i + 1) % 4 == 0
    with pytest.raises(ConfigError, match="layer_types"):
        model_config_from_hf({**base, "layer_types": ["sliding_attention"] * 8}, "qwen3_5", "float32")


def test_vision_language_checkpoint_keeps_its_vision_tower(dist_env: object, tmp_path: Path) -> None:
    """A Qwen3.5 VL checkpoint: text under model.language_model., a vision tower beside it. Import reads
    the text weights; the export writes them back under the same prefix with the vision tower as stored."""
    m = HYBRID
    model = _perturbed(m, seed=7)
    text = hf_export.hf_tensors(model, m)
    vision = {"model.visual.patch_embed.proj.weight": torch.randn(8, 3, 2, 2), "model.visual.merger.w": torch.ones(4)}
    src = tmp_path / "vl"
    src.mkdir()
    vl = {k.replace("model.", "model.language_model.", 1) if k.startswith("model.") else k: v for k, v in text.items()}
    save_file({**vl, **vision}, str(src / "model.safetensors"))
    special = {"bos_token_id": None, "eos_token_id": 1, "pad_token_id": 0}
    text_cfg = families.get("qwen3_5").hf_config(m, special)
    (src / "config.json").write_text(
        json.dumps(
            {
                "architectures": ["Qwen3_5ForConditionalGeneration"],
                "model_type": "qwen3_5",
                "text_config": text_cfg,
                "vision_config": {"depth": 1},
            }
        )
    )
    m_vl = replace(model_config_from_hf(json.loads((src / "config.json").read_text()), "qwen3_5", "float32"))
    m_vl = replace(m_vl, max_position_embeddings=512, vision_source=str(src))
    again = build_model(m_vl, seed=11)
    hf_import.load_into(again, src, m_vl)
    for name, t in again.state_dict().items():
        if "_extra_state" not in name:
            torch.testing.assert_close(t, model.state_dict()[name], atol=1e-7, rtol=0, msg=name)
    exported = hf_export.hf_tensors(again, m_vl)
    assert set(exported) == set(vl) | set(vision)
    for k, v in vision.items():
        assert torch.equal(exported[k], v)
    cfg = families.get("qwen3_5").hf_config(m_vl, special)
    assert cfg["architectures"] == ["Qwen3_5ForConditionalGeneration"] and cfg["vision_config"] == {"depth": 1}
    assert cfg["text_config"]["layer_types"] == list(m.layer_types)


def test_hybrid_tensor_parallel_split() -> None:
    """TP must divide the linear-attention heads; the per-rank interleave of in_proj/conv1d round-trips.
    (test_tensor_parallel runs the hybrid at TP 2 against one process.)"""
    from mtp_trainer.families.qwen3_next import gdn_tensor_parallel_layout
    from mtp_trainer.model_provider import ModelProvider

    with pytest.raises(ConfigError, match="tensorParallelSize 4 must divide the linear-attention"):
        ModelProvider(replace(HYBRID, num_key_value_heads=4, num_attention_heads=4), tensor_parallel_size=4).check()
    nk, nv, dk, dv = HYBRID.linear_dims()
    w = torch.arange(2 * nk * dk + 2 * nv * dv + 2 * nv, dtype=torch.float32)[:, None]
    c = torch.arange(2 * nk * dk + nv * dv, dtype=torch.float32)[:, None, None]
    full = {"decoder.layers.0.self_attention.in_proj.weight": w, "decoder.layers.0.self_attention.conv1d.weight": c}
    ranks = gdn_tensor_parallel_layout(full, HYBRID, 2, to_ranks=True)
    # rank 0's block starts with its first key head of q (rows 0..dk-1), then its key head of k
    block0 = ranks["decoder.layers.0.self_attention.in_proj.weight"][: w.shape[0] // 2, 0]
    assert block0[:dk].tolist() == list(range(dk)) and block0[dk : 2 * dk].tolist() == list(
        range(nk * dk, nk * dk + dk)
    )
    back = gdn_tensor_parallel_layout(ranks, HYBRID, 2, to_ranks=False)
    assert all(torch.equal(back[k], full[k]) for k in full)


# ------------------------------------------------------------------ vLLM CPU serving (bfloat16)

SERVED = replace(
    HYBRID,
    family="qwen3_next",  # the flavour vLLM loads on CPU (with the rollout's dense-MLP plugin)
    hidden_size=128,
    num_attention_heads=2,
    head_dim=64,  # vLLM CPU attention head dims include 64
    ffn_hidden_size=256,
    vocab_size=512,
    linear_num_key_heads=1,
    linear_num_value_heads=2,
    linear_key_head_dim=64,  # vLLM's CPU GDN ops need linear head dims >= 64
    linear_value_head_dim=64,
    dtype="bfloat16",  # vLLM's CPU GDN path runs bfloat16 only
)
PROMPTS = [[5, 17, 99, 200, 3, 42, 7, 300], [11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21]]
GEN = 24
BF16_LOGPROB_ATOL = 0.5  # vLLM computes in bfloat16, the reference in float32 on the same weights; measured 0.21


def _peaky(m: ModelConfig) -> torch.nn.Module:
    """Weights at 1/sqrt(fan-in) (and a 3x wider embedding/head), so logits spread over several nats and
    a wrong tensor mapping would move them far more than bfloat16 does."""
    import math

    model = build_model(replace(m, dtype="float32"), seed=0)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if p.dim() >= 2:
                wide = 3.0 if ("output_layer" in n or "word_embeddings" in n) else 1.0
                p.copy_(torch.randn(p.shape, generator=g) / math.sqrt(p.shape[-1]) * wide)
            else:
                p.add_(0.1 * torch.randn(p.shape, generator=g))
    return model


@pytest.mark.slow
def test_vllm_serves_the_hybrid_with_mtp(dist_env: object, tmp_path: Path) -> None:
    """vLLM CPU (bfloat16, MTP k=1, prefix caching off) on the exported hybrid vs the trainer in float32 on
    the same (bfloat16-rounded) weights: greedy tokens, each generated token's logprob, and the drafts and
    accepted drafts of a replay of the trainer's MTP argmax (test_export_parity's rule)."""
    import os
    import subprocess
    import sys

    out = _export(_peaky(SERVED), SERVED, tmp_path / "hybrid")
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_PLUGINS": "mtp_dense_qwen3_next"}
    iomp = Path(sys.prefix) / "lib" / "libiomp5.so"
    if iomp.is_file():
        env["LD_PRELOAD"] = str(iomp)
    proc = subprocess.run(
        [sys.executable, "-m", "tests.trainer.vllm_hybrid_probe", str(out), str(GEN), json.dumps(PROMPTS)],
        capture_output=True,
        text=True,
        timeout=900,
        env=env,
        cwd=Path(__file__).resolve().parents[2],
    )
    line = next((x for x in proc.stdout.splitlines() if x.startswith("VLLM_HYBRID_RESULT ")), None)
    assert proc.returncode == 0 and line is not None, proc.stderr[-3000:]
    got = json.loads(line.split(" ", 1)[1])

    m = replace(model_config_from_hf(json.loads((out / "config.json").read_text()), "qwen3_next", "float32"))
    ref = build_model(replace(m, max_position_embeddings=512), seed=2)
    hf_import.load_into(ref, out, m)  # the bfloat16 weights vLLM loaded, in float32
    ref.eval()
    worst, agree, total, drafts, accepted = 0.0, 0, 0, 0, 0
    for r in got["results"]:
        seq = r["prompt"] + r["tokens"]
        lm, mtp = _logits(ref, torch.tensor([seq]))
        logp = torch.log_softmax(lm, dim=-1)
        first = len(r["prompt"]) - 1
        for i, (tok, lp) in enumerate(zip(r["tokens"], r["logprobs"], strict=True)):
            worst = max(worst, abs(float(logp[first + i, tok]) - lp))
            agree += int(logp[first + i].argmax()) == tok
            total += 1
        pred = mtp.argmax(dim=-1).tolist()
        j = len(r["prompt"]) + 1
        while j < len(seq):
            drafts += 1
            if pred[j - 2] == seq[j]:
                accepted += 1
                j += 2
            else:
                j += 1
    print(f"vLLM hybrid: max |logprob diff| {worst:.3f}, greedy agreement {agree}/{total}, "
          f"drafts/accepted vLLM {got['drafts']}/{got['accepted']} replay {drafts}/{accepted}")  # fmt: skip
    assert worst < BF16_LOGPROB_ATOL
    assert agree >= total - 2  # bfloat16 may flip a near tie; measured 47/48
    assert got["drafts"] > 0
    assert abs(got["drafts"] - drafts) <= 2 and abs(got["accepted"] - accepted) <= 2


# ------------------------------------------------------------------ the entry point on a hybrid checkpoint

HYBRID_JOB = """\
apiVersion: mtp.io/v1alpha1
kind: MTPTrainingJob
metadata: {name: hybrid-sft}
spec:
  pipeline: sft
  model: {source: {path: ckpt}, family: qwen3_5, dtype: float32, mtpNumLayers: 1}
  trainer:
    gpusPerReplica: 0
    mtp: {trainingMode: joint, lossScalingFactor: 0.3}
    hyperparameters: {learningRate: 3.0e-3, minLearningRate: 3.0e-4, warmupSteps: 5, microBatchSize: 4,
                      globalBatchSize: 4, seqLength: 128, maxSteps: 40, saveSteps: 40, evalSteps: 40}
    data: {trainFiles: ["builtin:pydoc-topics"]}
"""


@pytest.mark.slow
def test_entry_point_trains_and_exports_a_hybrid_checkpoint(dist_env: object, tmp_path: Path) -> None:
    """``python -m mtp_trainer.main`` on a Qwen3.5 hybrid checkpoint directory: --check reads its
    config.json, the run imports it, trains (held-out losses fall), and the export loads in transformers."""
    import subprocess
    import sys

    from mtp_trainer import data, tokenizer
    from mtp_trainer.config import DataConfig

    m = replace(HYBRID, vocab_size=512)
    tok = tokenizer.train_bpe(data.corpus_text(data.split(DataConfig())[0]), m.vocab_size)
    ckpt = _export(build_model(m, seed=13), m, tmp_path / "ckpt")
    tokenizer.save(tok, ckpt)
    job = tmp_path / "job.yaml"
    job.write_text(HYBRID_JOB)
    main = [sys.executable, "-m", "mtp_trainer.main", "--job", str(job)]
    check = subprocess.run([*main, "--check"], capture_output=True, text=True, timeout=300)
    assert check.returncode == 0, check.stderr[-2000:]
    plan = json.loads(check.stdout)
    assert (plan["model"]["layers"], plan["model"]["mtp_layers"]) == (4, 1)
    out = tmp_path / "out"
    proc = subprocess.run(
        [*main, "--output-dir", str(out), "--metrics-port", "0"], capture_output=True, text=True, timeout=900
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    val = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines() if '"validation"' in x]
    print(
        "hybrid held-out lm/mtp loss:", [(r["step"], round(r["lm_loss"], 3), round(r["mtp_loss"][0], 3)) for r in val]
    )
    assert (
        val[-1]["lm_loss"] < val[0]["lm_loss"] - 0.8 and val[-1]["mtp_loss"][0] < val[0]["mtp_loss"][0] - 0.8
    )  # measured -1.26, -1.17
    cfg = json.loads((out / "hf" / "config.json").read_text())
    assert cfg["layer_types"] == list(HYBRID.layer_types) and cfg["mtp_num_hidden_layers"] == 1
    hf = AutoModelForCausalLM.from_pretrained(str(out / "hf"), dtype=torch.float32)
    assert type(hf).__name__ == "Qwen3_5ForCausalLM"
