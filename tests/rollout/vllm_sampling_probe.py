"""Run in a fresh process (vLLM's CPU platform set-up is process-wide): vLLM's own
``apply_sampling_constraints`` on speculative target logits, before and after ``vllm_compat.apply()``.
Prints one JSON line: the per-token temperatures vLLM divided by, each time."""

from __future__ import annotations

import json
from types import SimpleNamespace

import torch
from vllm.platforms import current_platform
from vllm.v1.sample import rejection_sampler as rs

current_platform.register_triton_kernel_overrides()


def divisors() -> list[float]:
    # Two requests at temperatures 0.5 and 2.0, with 2 and 1 draft tokens: 3 target rows of logits 1.
    meta = SimpleNamespace(temperature=torch.tensor([0.5, 2.0]), all_greedy=False, top_k=None, top_p=None)
    out = rs.apply_sampling_constraints(torch.ones(3, 4), torch.tensor([2, 3]), meta)  # type: ignore[arg-type]
    return [float(1.0 / x) for x in out[:, 0]]


before = divisors()
from mtp_rollout.runtime import vllm_compat  # noqa: E402

vllm_compat.apply()
print(json.dumps({"before": before, "after": divisors()}))
