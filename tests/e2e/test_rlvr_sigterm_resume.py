"""An RL run stopped by SIGTERM (a preempted pod) loses nothing: it checkpoints the finished RL step,
exits 143, and the next start resumes at that step with the weight versions continuing.

`mtpjob run` of a shrunk tiny-rlvr job; when the trainer's record shows RL step 1, the trainer's
process group (named in run.json, as a kubelet would signal the pod) gets SIGTERM. Then the same
command runs again (resume is the default) and must finish the remaining steps. Expectations come
from the job's own numbers (maxSteps) and the trainer's records, not from the code under test.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.e2e.conftest import ROOT, needs_vllm
from tests.e2e.test_mtpjob_run_rlvr import shrunk_job

pytestmark = [pytest.mark.slow, needs_vllm]

RL_STEPS = 4
EXIT_SIGTERM = 143


def _job(tmp_path: Path) -> Path:
    path = shrunk_job(tmp_path)
    job = yaml.safe_load(path.read_text())
    job["spec"]["trainer"]["hyperparameters"]["maxSteps"] = RL_STEPS
    path.write_text(yaml.safe_dump(job))
    return path


def _records(out: Path) -> list[dict[str, Any]]:
    path = out / "trainer" / "metrics.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _rl_steps(records: list[dict[str, Any]]) -> list[int]:
    return [
        r["step"] for r in records if r.get("phase") == "rl" and r.get("split") != "validation" and "event" not in r
    ]


def test_sigterm_mid_rl_checkpoints_and_resumes(tmp_path: Path) -> None:
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "mtpjob", "run", str(_job(tmp_path)), "--output-dir", str(out),
           "--prompts", "2", "--max-tokens", "16", "--no-plain"]  # fmt: skip
    first = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 900
        while 1 not in _rl_steps(_records(out)):
            assert first.poll() is None, "the run ended before RL step 1"
            assert time.monotonic() < deadline, "no RL step 1 within 15 minutes"
            time.sleep(0.5)
        pgid = json.loads((out / "run.json").read_text())["process_groups"]["trainer"]
        os.killpg(pgid, signal.SIGTERM)
        stdout, _ = first.communicate(timeout=300)
    finally:
        if first.poll() is None:
            first.kill()
    assert first.returncode != 0
    assert f"trainer exited with code {EXIT_SIGTERM}" in stdout, stdout[-3000:]
    assert [r["step"] for r in _records(out) if r.get("event") == "rl_start"] == [0]
    # The step that was finished when the signal was seen is checkpointed (1, or 2 if the signal
    # landed while step 2 ran), never the last one: the run did not end on its own.
    ckpts = sorted((out / "trainer" / "checkpoints").glob("step_*"))
    assert len(ckpts) == 1, ckpts
    meta = json.loads((ckpts[0] / "meta.json").read_text())
    stopped_at = int(meta["step"])
    assert 1 <= stopped_at < RL_STEPS and meta["weight_version"] == stopped_at
    assert _rl_steps(_records(out)) == list(range(1, stopped_at + 1))

    second = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=1500)
    assert second.returncode == 0, second.stdout[-4000:] + second.stderr[-4000:]
    records = _records(out)
    # The restart resumed at the checkpoint: every RL step ran exactly once, in order, and the
    # versions continue (the first resumed step sampled from the checkpointed version).
    assert [r["step"] for r in records if r.get("event") == "rl_start"] == [0, stopped_at]
    assert _rl_steps(records) == list(range(1, RL_STEPS + 1))
    resumed = next(r for r in records if r.get("phase") == "rl" and r.get("step") == stopped_at + 1 and "event" not in r
                   and r.get("split") != "validation")  # fmt: skip
    assert resumed["sample_weight_versions"] == [stopped_at] and resumed["weight_version"] == stopped_at + 1
