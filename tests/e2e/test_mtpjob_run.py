"""`mtpjob run` on the tiny example: artifacts, figures consistent with vLLM's counters, clean Ctrl-C.

Shortened with ``--max-steps`` (the same manifest; fewer optimizer steps) so the slow tier stays
within budget. No wall-clock assertions.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from tests.e2e.conftest import EXAMPLE, ROOT, needs_vllm
from tests.e2e.procs import wait_gone

pytestmark = [pytest.mark.slow, needs_vllm]


def mtpjob(*args: str) -> list[str]:
    return [sys.executable, "-m", "mtpjob", "run", str(EXAMPLE), *args]


def test_mtpjob_run_tiny_example(tmp_path):
    out = tmp_path / "run"
    proc = subprocess.run(
        mtpjob("--output-dir", str(out), "--max-steps", "4", "--prompts", "3", "--max-tokens", "24"),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    for artifact in (
        "summary.json", "outputs.jsonl", "run.json", "trainer.log", "vllm-spec.log", "vllm-plain.log",
        "trainer/metrics.jsonl", "trainer/hf/config.json", "trainer/hf/model.safetensors",
    ):  # fmt: skip
        assert (out / artifact).is_file(), artifact
    summary = json.loads((out / "summary.json").read_text())
    raw, acc = summary["vllm_counter_deltas"], summary["acceptance"]
    assert raw["drafts"] > 0
    assert acc["acceptance_rate"] == pytest.approx(raw["accepted"] / raw["draft_tokens"])
    assert acc["mean_acceptance_length"] == pytest.approx(1 + raw["accepted"] / raw["drafts"])
    assert acc["per_position"] == pytest.approx([raw["accepted_pos_0"] / raw["drafts"]])
    assert summary["status"]["acceptanceRate"] == round(acc["acceptance_rate"], 2)
    assert summary["greedy_outputs_equal"] is True
    assert summary["speedup"] > 0
    assert summary["training"]["last_train"]["step"] == 4
    assert len((out / "outputs.jsonl").read_text().splitlines()) == 3
    assert "acceptance rate" in proc.stdout and "measured speedup" in proc.stdout


def test_ctrl_c_leaves_no_children(tmp_path):
    out = tmp_path / "run"
    proc = subprocess.Popen(
        mtpjob("--output-dir", str(out), "--fresh"), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    groups: dict[str, int] = {}
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and not groups:
        info = out / "run.json"
        if info.exists():
            groups = json.loads(info.read_text()).get("process_groups", {})
        time.sleep(0.5)
    assert groups, "the run never started its trainer"
    time.sleep(5)  # let the trainer get going (and spawn what it spawns)
    os.kill(proc.pid, signal.SIGINT)
    stdout, _ = proc.communicate(timeout=120)
    assert proc.returncode == 130, stdout.decode()[-2000:]
    assert b"interrupted" in stdout
    for name, pgid in groups.items():
        assert wait_gone(pgid) == [], f"{name} (group {pgid}) outlived the run"
