"""Every CPU workaround for Megatron-core 0.16, in one place.

Megatron-core is written for CUDA. It runs on CPU (gloo, world size >= 1) with a handful of
workarounds, measured on megatron-core 0.16.1 + torch 2.13 CPU (see /work/shared/NOTES.md):

1. ``torch.cuda.current_device()`` is called unconditionally in a few places that a CPU run
   reaches: RoPE moves ``inv_freq`` to it on the first forward
   (``rotary_pos_embedding.py: get_emb``), the attention KV-cache allocator, the CP roll in MTP and
   the MTP loss tracker. On a machine without CUDA the real function raises, so we answer ``"cpu"``:
   every caller uses the value only as a ``device=`` argument. The patch is applied only when CUDA
   is absent, so a GPU run never sees it.
2. ``model_parallel_cuda_manual_seed(seed, inference_rng_tracker=True)``: the default tracker
   forks CUDA RNG states; the inference tracker does not.
3. ``use_cpu_initialization=True`` and every fusion off (they are TE/apex/CUDA kernels); see
   :func:`cpu_transformer_config_overrides`, which the model provider merges into its config.
4. Layers come from ``get_gpt_layer_local_spec`` / ``get_gpt_mtp_block_spec(...,
   use_transformer_engine=False)`` (no Transformer Engine on CPU): chosen by the model provider.
5. The default causal mask is created on ``cuda`` (``transformer/utils.py``); the trainer always
   passes an explicit boolean mask (``data.py`` builds a block-diagonal one for packed rows).
6. ``get_forward_backward_func`` and ``get_megatron_optimizer`` hard-code CUDA, so the train loop
   is a plain PyTorch loop with ``torch.optim.AdamW`` (and, on CPU, pipeline parallel size 1).
7. Gated DeltaNet (Qwen3.5's linear-attention layers, ``megatron/core/ssm/gated_delta_net.py``)
   without flash-linear-attention (``fla``, Triton kernels): :func:`gated_delta_net_shims`. The
   layer raises at construction unless ``HAVE_FLA``, and calls ``fla``'s Triton ``l2norm``; with
   ``deterministic_mode`` it otherwise runs pure torch (``torch_chunk_gated_delta_rule``,
   ``nn.Conv1d``). The l2norm stand-in is fla's (and transformers') formula exactly,
   ``x * rsqrt(sum(x^2) + 1e-6)``. Its ``conv1d``/``A_log``/``dt_bias`` are created on
   ``torch.cuda.current_device()``, which workaround 1 answers on CPU.
8. Activation recompute (``spec.trainer.strategy.recompute``): Megatron's ``CheckpointFunction``
   saves and restores the CUDA RNG state around the recomputed forward
   (``tensor_parallel/random.py: _get_cuda_rng_state / _set_cuda_rng_state``), which raises without
   CUDA. On CPU there is no CUDA RNG to keep: an empty state and a no-op restore (the CPU RNG is still
   saved and restored by the same function). Installed by :func:`apply`, only when CUDA is absent.
9. Mixture of experts (``transformer/moe/``), :func:`moe_shims` and the provider's ``moe_config``:
   the router's gating linear (``moe_utils.RouterGatingLinearFunction``) tests
   ``te_general_gemm is not None``, a name bound only when Transformer Engine imports, so without TE
   it raises ``NameError``; binding it to ``None`` selects its own ``torch.mm`` path. The ``alltoall``
   token dispatcher creates a ``torch.cuda.Stream`` at construction, so the provider uses
   ``allgather``; experts are the local ``SequentialMLP`` (no grouped GEMM), fusions stay off.
10. Pipeline parallel: ``LanguageModule.setup_embeddings_and_output_layer`` copies the embedding to
   the last stage's duplicate (the MTP block's and a tied output layer's) with an all-reduce over
   ``weight.data.cuda()``. :func:`tensor_cuda_is_identity` makes ``Tensor.cuda`` return the tensor
   while the model is built, only when CUDA is absent, so the same all-reduce runs over gloo.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch

_PATCHED = False


def on_cpu() -> bool:
    """True when this process computes on CPU (no usable CUDA device)."""
    return not torch.cuda.is_available()


def apply() -> None:
    """Install workaround 1 once per process, only when CUDA is absent. Idempotent."""
    global _PATCHED
    if _PATCHED or not on_cpu():
        return

    def _current_device() -> str:
        return "cpu"

    torch.cuda.current_device = _current_device  # type: ignore[assignment]
    from megatron.core.tensor_parallel import random as tp_random

    def _no_cuda_rng_state(*args: Any, **kwargs: Any) -> torch.Tensor:
        return torch.empty(0, dtype=torch.uint8)

    def _no_cuda_rng_restore(*args: Any, **kwargs: Any) -> None:
        return None

    tp_random._get_cuda_rng_state = _no_cuda_rng_state
    tp_random._set_cuda_rng_state = _no_cuda_rng_restore
    _PATCHED = True


@contextmanager
def tensor_cuda_is_identity() -> Iterator[None]:
    """Workaround 10, for the duration of the block and only without CUDA."""
    if not on_cpu():
        yield
        return
    original = torch.Tensor.cuda

    def _stay(self: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        return self

    torch.Tensor.cuda = _stay  # type: ignore[method-assign,assignment]
    try:
        yield
    finally:
        torch.Tensor.cuda = original  # type: ignore[method-assign]


def seed_model_parallel_rng(seed: int) -> None:
    """Workaround 2: Megatron's tensor-parallel RNG tracker without CUDA RNG forks on CPU."""
    from megatron.core.tensor_parallel import model_parallel_cuda_manual_seed

    if on_cpu():
        model_parallel_cuda_manual_seed(seed, inference_rng_tracker=True)
    else:
        model_parallel_cuda_manual_seed(seed)


def cpu_transformer_config_overrides() -> dict[str, Any]:
    """Workaround 3: TransformerConfig fields that must be off (or on) without CUDA kernels."""
    return {
        "use_cpu_initialization": True,
        "bias_activation_fusion": False,
        "bias_dropout_fusion": False,
        "masked_softmax_fusion": False,
        "persist_layer_norm": False,
        "apply_rope_fusion": False,
        "gradient_accumulation_fusion": False,
        "cross_entropy_loss_fusion": False,
    }


def _l2norm(x: torch.Tensor, dim: int = -1, eps: float = 1e-6) -> torch.Tensor:
    """fla's ``l2norm`` (and transformers' Qwen3.5 one), in torch."""
    return x * torch.rsqrt((x * x).sum(dim=dim, keepdim=True) + eps)


def gated_delta_net_shims() -> bool:
    """Workaround 7 when ``fla`` is not importable; returns True when the pure-torch path is needed
    (the model provider then sets ``deterministic_mode``). Idempotent."""
    from megatron.core.ssm import gated_delta_net as gdn

    if getattr(gdn, "_MTP_SHIMMED", False):
        return True
    if gdn.HAVE_FLA and not on_cpu():
        return False
    gdn.HAVE_FLA = True
    gdn.l2norm = _l2norm
    gdn._MTP_SHIMMED = True  # type: ignore[attr-defined]
    return True


def moe_shims() -> None:
    """Workaround 9 when Transformer Engine is absent (CPU or GPU). Idempotent."""
    from megatron.core.transformer.moe import moe_utils

    if not moe_utils.HAVE_TE and not hasattr(moe_utils, "te_general_gemm"):
        moe_utils.te_general_gemm = None  # type: ignore[attr-defined]
