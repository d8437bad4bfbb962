"""The entry point as the operator runs it: resume in a new process, and two data-parallel ranks."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import SFT_JOB

# Every test here shares a ~1 min training run (the sft_run fixture).
pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _records(out: Path) -> list[dict]:
    return [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]


def test_main_resumes_latest_checkpoint(sft_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    shutil.copytree(sft_run, out)
    job = tmp_path / "job.yaml"
    job.write_text(SFT_JOB)
    cmd = [sys.executable, "-m", "mtp_trainer.main", "--job", str(job), "--output-dir", str(out)]
    proc = subprocess.run(
        [*cmd, "--metrics-port", "0", "--max-steps", "152"], capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    start = json.loads(next(x for x in proc.stdout.splitlines() if '"event": "start"' in x))
    assert start["step"] == 150
    train = [r["step"] for r in _records(out) if "split" not in r]
    assert train[-3:] == [150, 151, 152]
    assert (out / "checkpoints" / "step_152" / "meta.json").is_file()
    assert json.loads((out / "hf" / "config.json").read_text())["model_type"] == "qwen3_next"


def test_two_data_parallel_ranks(tmp_path: Path) -> None:
    job = tmp_path / "job.yaml"
    job.write_text(
        SFT_JOB.replace(
            "maxSteps: 150, saveSteps: 75, evalSteps: 75", "maxSteps: 3, saveSteps: 3, evalSteps: 3"
        ).replace("microBatchSize: 8", "microBatchSize: 4")
    )
    out = tmp_path / "out"
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
    }
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc-per-node",
            "2",
            "--master-port",
            str(_free_port()),
            "-m",
            "mtp_trainer.main",
            "--job",
            str(job),
            "--output-dir",
            str(out),
            "--metrics-port",
            "0",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    start = json.loads(next(x for x in proc.stdout.splitlines() if '"event": "start"' in x))
    assert start["world_size"] == 2
    assert [r["step"] for r in _records(out) if "split" not in r] == [1, 2, 3]
    assert (out / "checkpoints" / "step_3" / "model_tp0.pt").is_file()
    assert (out / "hf" / "model.safetensors").is_file()


def test_completed_trainer_holds_at_max_steps_until_sigterm(sft_run: Path, tmp_path: Path) -> None:
    """A restart of a finished run (what the StatefulSet does) resumes at maxSteps, reports it, and
    holds instead of exiting into another restart; SIGTERM ends it with status 0."""
    import urllib.request

    out = tmp_path / "out"
    shutil.copytree(sft_run, out)
    job = tmp_path / "job.yaml"
    job.write_text(SFT_JOB)
    port = _free_port()
    cmd = [sys.executable, "-m", "mtp_trainer.main", "--job", str(job), "--output-dir", str(out)]
    proc = subprocess.Popen(
        [*cmd, "--metrics-port", str(port), "--hold-after-completion"], stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None
        events = []
        for line in proc.stdout:
            if line.startswith('{"event"'):
                events.append(json.loads(line))
                if events[-1]["event"] == "hold":
                    break
        assert [e["event"] for e in events] == ["start", "done", "hold"], events
        assert events[0]["step"] == 150 and events[1]["step"] == 150
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30).read().decode()
        assert 'mtp_trainer_step{job="trainer-test-sft",namespace=""} 150.0' in text
        assert proc.poll() is None  # still holding
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=120) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
