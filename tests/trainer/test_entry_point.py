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


PP2 = """
    strategy: {pipelineParallelSize: 2}
    replicas: 2
    gpusPerReplica: 0"""  # 2 processes, one pipeline of 2 stages (one layer each, MTP on the last)


EP2 = """
    strategy: {expertParallelSize: 2}
    replicas: 2
    gpusPerReplica: 0"""  # 2 processes, data parallel 2, each holding 2 of the 4 experts of every MoE layer
MOE = "vocabSize: 512, moe: {numExperts: 4, numExpertsPerTok: 2, moeIntermediateSize: 64, sharedExpertIntermediateSize: 64}"


def _torchrun(job: Path, out: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
    }
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", str(_free_port())]
    cmd += ["-m", "mtp_trainer.main", "--job", str(job), "--output-dir", str(out), "--metrics-port", "0", *extra]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)


@pytest.mark.parametrize("layout", ["dp2", "tp2-sp", "pp2", "ep2"])
def test_two_ranks(tmp_path: Path, layout: str) -> None:
    """Two processes under torchrun: data parallel 2, tensor parallel 2 with sequence parallel, expert
    parallel 2 (a MoE, half the experts on each rank), or pipeline parallel 2 with two micro-batches a
    step, which then resumes in a new pair of processes
    (the strategy reaches Megatron through the entry point; the equivalence with one process is
    tests/trainer/test_tensor_parallel.py's and test_pipeline_parallel.py's)."""
    job = tmp_path / "job.yaml"
    text = SFT_JOB.replace(
        "maxSteps: 150, saveSteps: 75, evalSteps: 75", "maxSteps: 3, saveSteps: 3, evalSteps: 3"
    ).replace("microBatchSize: 8", "microBatchSize: 4")
    if layout == "tp2-sp":
        text = text.replace("\n    gpusPerReplica: 0", TP2_SP).replace("globalBatchSize: 8", "globalBatchSize: 4")
        text = text.replace("numAttentionHeads: 2, numKeyValueHeads: 1", "numAttentionHeads: 4, numKeyValueHeads: 2")
    if layout == "pp2":
        text = text.replace("\n    gpusPerReplica: 0", PP2)
    if layout == "ep2":
        text = text.replace("\n    gpusPerReplica: 0", EP2).replace("vocabSize: 512", MOE)
    job.write_text(text)
    out = tmp_path / "out"
    proc = _torchrun(job, out)
    assert proc.returncode == 0, proc.stderr[-4000:]
    start = json.loads(next(x for x in proc.stdout.splitlines() if '"event": "start"' in x))
    assert start["world_size"] == 2
    train = [r for r in _records(out) if "split" not in r]
    assert [r["step"] for r in train] == [1, 2, 3]
    step = out / "checkpoints" / "step_3"
    names = {
        "dp2": ["model_tp0.pt"],
        "tp2-sp": ["model_tp0.pt", "model_tp1.pt"],
        "pp2": ["model_tp0_pp0.pt", "model_tp0_pp1.pt"],
        "ep2": ["model_tp0_ep0.pt", "model_tp0_ep1.pt"],
    }
    assert sorted(p.name for p in step.glob("model_*.pt")) == names[layout]
    assert (out / "hf" / "model.safetensors").is_file()
    if layout == "ep2":  # the export holds all 4 experts of each MoE layer, joined from both ranks
        from safetensors import safe_open

        with safe_open(str(out / "hf" / "model.safetensors"), "pt") as f:
            experts = {k.split(".experts.")[1].split(".")[0] for k in f.keys() if "layers.1.mlp.experts." in k}
        assert experts == {"0", "1", "2", "3"}, experts
        assert all(len(r["expert_load"]) == 3 for r in train)  # 2 trunk layers + the MTP layer, every rank's tokens
    if layout != "pp2":
        return
    # The last stage's losses reached rank 0's metrics, MTP included; the export joined both stages.
    assert all(r["lm_loss"] > 0 and len(r["mtp_loss"]) == 1 and r["mtp_loss"][0] > 0 for r in train)
    from safetensors import safe_open

    with safe_open(str(out / "hf" / "model.safetensors"), "pt") as f:
        keys = set(f.keys())
    assert {"model.layers.0.mlp.up_proj.weight", "model.layers.1.mlp.up_proj.weight"} <= keys
    assert any(k.startswith("mtp.") for k in keys) and "model.embed_tokens.weight" in keys
    again = _torchrun(job, out, "--max-steps", "4")
    assert again.returncode == 0, again.stderr[-4000:]
    restart = json.loads(next(x for x in again.stdout.splitlines() if '"event": "start"' in x))
    assert restart["step"] == 3
    assert [r["step"] for r in _records(out) if "split" not in r][-2:] == [3, 4]
    # Import back into two stages: the export of step 4 scores the held-out data exactly as the model
    # that wrote it (each stage loads its own layers from the one-stage Hugging Face names).
    last_eval = [r for r in _records(out) if r.get("split") == "validation"][-1]
    assert last_eval["step"] == 4
    src = tmp_path / "job-from-export.yaml"
    tiny = text[text.index("source: {tiny:") : text.index("}}", text.index("source: {tiny:")) + 2]
    src.write_text(text.replace(tiny, f"source: {{path: {out / 'hf'}}}").replace("maxSteps: 3", "maxSteps: 1"))
    imported = tmp_path / "imported"
    third = _torchrun(src, imported)
    assert third.returncode == 0, third.stderr[-4000:]
    first_eval = next(r for r in _records(imported) if r.get("split") == "validation")
    assert first_eval["step"] == 0
    assert first_eval["lm_loss"] == pytest.approx(last_eval["lm_loss"], rel=1e-5)
    assert first_eval["mtp_loss"] == pytest.approx(last_eval["mtp_loss"], rel=1e-5)


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
