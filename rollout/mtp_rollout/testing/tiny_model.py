"""Tiny ``Qwen3NextForCausalLM`` checkpoints with an MTP head, for tests and benchmarks.

Why: the rollout tests need a real model that vLLM CPU serves with ``method: mtp`` long before
(and independently of) the trainer's exporter. The checkpoint has the exact layout the trainer
exports (dense, every layer full attention, ``num_nextn_predict_layers: 1``, tensors ``mtp.fc``,
``mtp.pre_fc_norm_*``, ``mtp.layers.0.*``, ``mtp.norm``), so the same launcher path runs on both.

Trick: build a Hugging Face model with one extra decoder layer, then rename that layer to
``mtp.layers.0``; Qwen3-Next's MTP layer is an ordinary decoder layer.

Two heads give deterministic acceptance controls:
- ``head="random"``: random MTP weights, so acceptance is near 0%;
- ``head="zero"``: the output layer is all zeros, so every logit is 0, greedy picks token 0 for
  the target and the drafter alike, and acceptance is ~100%;
- ``head="bigram"``: every attention and MLP output projection is zero, so the trunk is a
  bigram model (next token = f(current token)). The MTP head gets ``fc = [I | σ·R]``: with
  σ = 0 it computes exactly f of the token it is given, so drafts equal the target (100%);
  ``draft_noise`` σ > 0 mixes in the hidden state and acceptance falls in between (σ = 0.3
  gives about 50%), with accepted and rejected drafts in the same request, where 0 and 1
  would hide a bug.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "Speculative decoding drafts tokens with a cheap model and verifies them with the target.",
    "Multi-token prediction trains extra heads that predict tokens further ahead.",
    "Kubernetes operators reconcile custom resources into pods, services and deployments.",
    "Prometheus scrapes counters and computes rates over windows of samples.",
]


def train_tokenizer(out_dir: Path, vocab_size: int = 256) -> int:
    """A byte-level BPE tokenizer trained on a few sentences; returns its vocabulary size."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(CORPUS * 4, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", pad_token="<|endoftext|>")
    fast.save_pretrained(str(out_dir))
    return int(tok.get_vocab_size())


def make_tiny_qwen3_next(
    out_dir: str | Path,
    *,
    head: Literal["random", "zero", "bigram"] = "random",
    draft_noise: float = 0.3,
    hidden_size: int = 128,
    num_layers: int = 2,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    intermediate_size: int = 128,
    vocab_size: int = 512,
    seed: int = 0,
) -> Path:
    """Write a tiny Qwen3-Next checkpoint with one MTP layer into ``out_dir`` and return it.

    The head dim (hidden_size / num_heads) must be one vLLM's CPU attention supports (32, 64, ...).
    """
    import torch
    from safetensors.torch import load_file, save_file
    from transformers import Qwen3NextConfig, Qwen3NextForCausalLM

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tok_vocab = train_tokenizer(out)
    vocab_size = max(vocab_size, tok_vocab)
    torch.manual_seed(seed)
    head_dim = hidden_size // num_heads
    common: dict[str, Any] = dict(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_attention_heads=num_heads,
        num_key_value_heads=num_kv_heads,
        head_dim=head_dim,
        num_experts=0,
        mlp_only_layers=[],
        max_position_embeddings=2048,
        tie_word_embeddings=False,
        eos_token_id=0,
        bos_token_id=0,
        pad_token_id=0,
        torch_dtype="float32",
    )
    # One layer more than the trunk: its weights become the MTP layer.
    build_cfg = Qwen3NextConfig(
        num_hidden_layers=num_layers + 1, layer_types=["full_attention"] * (num_layers + 1), **common
    )
    model: Any = Qwen3NextForCausalLM(build_cfg)
    model = model.to(torch.float32)
    if head == "zero":
        with torch.no_grad():
            model.lm_head.weight.zero_()
    if head == "bigram":
        with torch.no_grad():
            for name, param in model.named_parameters():
                if name.endswith(("o_proj.weight", "down_proj.weight")):
                    param.zero_()
    model.save_pretrained(str(out), safe_serialization=True)
    tensors: dict[str, torch.Tensor] = {}
    for f in sorted(out.glob("*.safetensors")):
        tensors.update(load_file(str(f)))
        f.unlink()
    for idx in out.glob("*.safetensors.index.json"):
        idx.unlink()
    final: dict[str, torch.Tensor] = {}
    mtp_prefix = f"model.layers.{num_layers}."
    for name, value in tensors.items():
        if name.startswith(mtp_prefix):
            final["mtp.layers.0." + name[len(mtp_prefix) :]] = value.contiguous()
        else:
            final[name] = value.contiguous()
    gen = torch.Generator().manual_seed(seed + 1)
    if head == "bigram":
        mix = torch.randn(hidden_size, hidden_size, generator=gen) / hidden_size**0.5
        final["mtp.fc.weight"] = torch.cat([torch.eye(hidden_size), draft_noise * mix], dim=1)
    else:
        final["mtp.fc.weight"] = torch.randn(hidden_size, 2 * hidden_size, generator=gen) * 0.02
    # Qwen3-Next norms compute x * (1 + w): zeros are the identity scale.
    final["mtp.pre_fc_norm_embedding.weight"] = torch.zeros(hidden_size)
    final["mtp.pre_fc_norm_hidden.weight"] = torch.zeros(hidden_size)
    final["mtp.norm.weight"] = torch.zeros(hidden_size)
    save_file(final, str(out / "model.safetensors"), metadata={"format": "pt"})
    cfg = json.loads((out / "config.json").read_text())
    cfg["num_hidden_layers"] = num_layers
    cfg["layer_types"] = ["full_attention"] * num_layers
    cfg["num_nextn_predict_layers"] = 1
    cfg["architectures"] = ["Qwen3NextForCausalLM"]
    (out / "config.json").write_text(json.dumps(cfg, indent=2))
    return out


if __name__ == "__main__":
    import sys

    make_tiny_qwen3_next(sys.argv[1], head=sys.argv[2] if len(sys.argv) > 2 else "random")  # type: ignore[arg-type]


def collapse_mtp_head(src: Path, dst: Path, *, seed: int = 0) -> Path:
    """A copy of the export ``src`` in ``dst`` whose MTP fusion matrix ``mtp.fc.weight`` is
    replaced by seeded noise of the same scale: the trunk is untouched (same greedy outputs), the
    drafter now guesses, and acceptance collapses to near zero. The benchmarks' "collapsed head"."""
    import shutil

    import torch
    from safetensors.torch import load_file, save_file

    shutil.copytree(src, dst, dirs_exist_ok=True)
    tensors = load_file(str(Path(src) / "model.safetensors"))
    fc = tensors["mtp.fc.weight"]
    gen = torch.Generator().manual_seed(seed)
    tensors["mtp.fc.weight"] = (torch.randn(fc.shape, generator=gen) * fc.float().std()).to(fc.dtype)
    save_file(tensors, str(Path(dst) / "model.safetensors"), metadata={"format": "pt"})
    return Path(dst)
