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


TP2_SP = """
    strategy: {tensorParallelSize: 2, sequenceParallel: true}
    replicas: 2
    gpusPerReplica: 0"""  # on CPU a replica is one process: 2 processes, one TP group


@pytest.mark.parametrize("layout", ["dp2", "tp2-sp"])
def test_two_ranks(tmp_path: Path, layout: str) -> None:
    """Two processes under torchrun: data parallel 2, or tensor parallel 2 with sequence parallel
    (the strategy reaches Megatron through the entry point; the equivalence with one process is
    tests/trainer/test_tensor_parallel.py's)."""
    job = tmp_path / "job.yaml"
    text = SFT_JOB.replace(
        "maxSteps: 150, saveSteps: 75, evalSteps: 75", "maxSteps: 3, saveSteps: 3, evalSteps: 3"
    ).replace("microBatchSize: 8", "microBatchSize: 4")
    if layout == "tp2-sp":
        text = text.replace("\n    gpusPerReplica: 0", TP2_SP).replace("globalBatchSize: 8", "globalBatchSize: 4")
        text = text.replace("numAttentionHeads: 2, numKeyValueHeads: 1", "numAttentionHeads: 4, numKeyValueHeads: 2")
    job.write_text(text)
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
    assert (out / "checkpoints" / "step_3" / "model_tp1.pt").is_file() == (layout == "tp2-sp")
    assert (out / "hf" / "model.safetensors").is_file()


def test_a_finished_run_restarted_reports_completion_again_and_exits(sft_run: Path, tmp_path: Path) -> None:
    """A restart of a finished run (what a StatefulSet does to a container that exited) finds the
    completion marker, writes the termination message the operator reads success from, trains and
    writes nothing, and exits 0; with --hold-after-completion (local use) it holds until SIGTERM."""
    out = tmp_path / "out"
    shutil.copytree(sft_run, out)
    job = tmp_path / "job.yaml"
    job.write_text(SFT_JOB)
    lines_before = (out / "metrics.jsonl").read_text().count("\n")
    message = tmp_path / "termination-log"
    env = dict(os.environ, MTP_TERMINATION_MESSAGE_PATH=str(message))
    cmd = [sys.executable, "-m", "mtp_trainer.main", "--job", str(job), "--output-dir", str(out)]
    proc = subprocess.run([*cmd, "--metrics-port", "0"], capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert message.read_text().startswith("mtp-complete ")
    assert json.loads(message.read_text().removeprefix("mtp-complete "))["step"] == 150
    assert (out / "metrics.jsonl").read_text().count("\n") == lines_before  # nothing trained again
    assert not (out / "checkpoints" / "step_151").exists()

    held = subprocess.Popen([*cmd, "--hold-after-completion"], stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert held.stdout is not None
        first = json.loads(held.stdout.readline())
        assert first == {"event": "hold"}
        assert held.poll() is None  # still holding
        held.send_signal(signal.SIGTERM)
        assert held.wait(timeout=120) == 0
    finally:
        if held.poll() is None:
            held.kill()
            held.wait()
