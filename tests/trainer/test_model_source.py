"""Where the trainer finds its model (the operator's MTP_MODEL_PATH rule), the Hub download it does
itself for a huggingFace source (with a fake downloader: no network), and holding after completion."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from mtp_api import types as t
from mtp_operator.builders.trainer import trainer_env
from mtp_trainer import hub, main
from mtp_trainer.config import ConfigError, MetricsConfig, SourceConfig, _source
from mtp_trainer.metrics import Metrics

from .conftest import SFT_JOB


def job_with(source: dict[str, Any]) -> t.MTPTrainingJob:
    body = yaml.safe_load(SFT_JOB)
    body["metadata"]["namespace"] = "ns"
    body["spec"]["model"]["source"] = source
    return t.MTPTrainingJob.model_validate(body)


PVC = {"pvc": {"claimName": "models", "path": "qwen/3"}}
HF = {"huggingFace": {"id": "Qwen/Qwen3-Next-80B-A3B", "revision": "abc123"}}

SOURCE_CASES = [
    # id, spec source, MTP_MODEL_PATH, expected SourceConfig
    ("tiny", {"tiny": {}}, None, SourceConfig(kind="tiny")),
    ("pvc-default", PVC, None, SourceConfig(kind="path", path="/models/source/qwen/3")),
    ("pvc-env", PVC, "/mnt/m", SourceConfig(kind="path", path="/mnt/m")),
    ("pvc-root", {"pvc": {"claimName": "models"}}, None, SourceConfig(kind="path", path="/models/source")),
    ("path-relative", {"path": "ckpt"}, None, SourceConfig(kind="path", path="/jobs/ckpt")),
    ("path-env", {"path": "ckpt"}, "/abs/ckpt", SourceConfig(kind="path", path="/abs/ckpt")),
    ("hf", HF, None, SourceConfig(kind="huggingFace", repo_id="Qwen/Qwen3-Next-80B-A3B", revision="abc123")),
    ("hf-env", HF, "org/other", SourceConfig(kind="huggingFace", repo_id="org/other", revision="abc123")),
]


@pytest.mark.parametrize(("case", "source", "env", "want"), SOURCE_CASES, ids=[c[0] for c in SOURCE_CASES])
def test_source_resolution(
    case: str, source: dict[str, Any], env: str | None, want: SourceConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    if env is None:
        monkeypatch.delenv("MTP_MODEL_PATH", raising=False)
    else:
        monkeypatch.setenv("MTP_MODEL_PATH", env)
    assert _source(job_with(source), Path("/jobs")) == want


@pytest.mark.parametrize("source", [PVC, HF, {"path": "/abs/ckpt"}], ids=["pvc", "huggingFace", "path"])
def test_operator_env_and_trainer_default_agree(source: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    job = job_with(source)
    monkeypatch.delenv("MTP_MODEL_PATH", raising=False)
    derived = _source(job, Path("/jobs"))
    env = {e["name"]: e.get("value") for e in trainer_env(job)}
    monkeypatch.setenv("MTP_MODEL_PATH", env["MTP_MODEL_PATH"])
    assert _source(job, Path("/jobs")) == derived


class FakeHub:
    def __init__(self, fail: Exception | None = None) -> None:
        self.calls: list[tuple[str, str, Path]] = []
        self.fail = fail

    def __call__(self, repo_id: str, revision: str, local_dir: Path) -> None:
        self.calls.append((repo_id, revision, local_dir))
        if self.fail is not None:
            raise self.fail
        (local_dir / "config.json").write_text("{}")


HF_SRC = SourceConfig(kind="huggingFace", repo_id="org/model", revision="main")


def test_hub_downloads_once_and_reuses(tmp_path: Path) -> None:
    fake = FakeHub()
    got = hub.fetch(HF_SRC, tmp_path, local_rank=0, download=fake)
    assert got == SourceConfig(kind="path", path=str(tmp_path / "source-model"))
    assert (tmp_path / "source-model" / "config.json").is_file()
    assert json.loads((tmp_path / "source-model" / hub.MARKER).read_text()) == {
        "repo_id": "org/model",
        "revision": "main",
    }
    assert [c[:2] for c in fake.calls] == [("org/model", "main")]
    assert hub.fetch(HF_SRC, tmp_path, local_rank=0, download=fake) == got  # a restart
    assert len(fake.calls) == 1
    assert [p.name for p in tmp_path.iterdir()] == ["source-model"]


def test_other_local_ranks_wait_for_the_marker(tmp_path: Path) -> None:
    waits: list[float] = []

    def sleep(seconds: float) -> None:  # local rank 0 finishes while rank 1 waits
        waits.append(seconds)
        hub.fetch(HF_SRC, tmp_path, local_rank=0, download=FakeHub())

    never = FakeHub(fail=AssertionError("only local rank 0 downloads"))
    got = hub.fetch(HF_SRC, tmp_path, local_rank=1, download=never, sleep=sleep)
    assert got.path == str(tmp_path / "source-model") and len(waits) == 1 and never.calls == []


def test_a_node_that_loses_the_rename_race_uses_the_winner(tmp_path: Path) -> None:
    """Two nodes share the output volume; node 1 finishes while node 0 is still downloading."""

    def download(repo_id: str, revision: str, local_dir: Path) -> None:
        (local_dir / "config.json").write_text("{}")
        hub.fetch(HF_SRC, tmp_path, local_rank=0, node_rank=1, download=FakeHub())

    got = hub.fetch(HF_SRC, tmp_path, local_rank=0, node_rank=0, download=download)
    assert got.path == str(tmp_path / "source-model")
    assert [p.name for p in tmp_path.iterdir()] == ["source-model"]


def test_failed_download_names_the_field_and_the_pvc_fix(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"spec\.model\.source\.huggingFace.*source\.pvc") as err:
        hub.fetch(HF_SRC, tmp_path, local_rank=0, download=FakeHub(fail=OSError("network is unreachable")))
    assert "network is unreachable" in str(err.value)
    assert not (tmp_path / "source-model").exists()


def test_a_different_model_in_the_output_dir_is_an_error(tmp_path: Path) -> None:
    hub.fetch(HF_SRC, tmp_path, local_rank=0, download=FakeHub())
    other = SourceConfig(kind="huggingFace", repo_id="org/other", revision="main")
    with pytest.raises(ConfigError, match=r"spec\.model\.source\.huggingFace is org/other@main"):
        hub.fetch(other, tmp_path, local_rank=0, download=FakeHub())


def test_local_sources_pass_through(tmp_path: Path) -> None:
    src = SourceConfig(kind="path", path="/x")
    assert hub.fetch(src, tmp_path, local_rank=0, download=FakeHub(fail=AssertionError())) is src


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_hold_returns_0_on_signal_and_restores_handlers(sig: signal.Signals) -> None:
    before = signal.getsignal(sig)
    assert main.hold_until_signalled(ready=lambda: os.kill(os.getpid(), sig)) == 0
    assert signal.getsignal(sig) is before


def test_set_step_reports_without_a_record(tmp_path: Path) -> None:
    from prometheus_client import generate_latest

    m = Metrics(MetricsConfig(port=0, job="j", namespace="ns"), tmp_path)
    m.set_step(150)
    assert 'mtp_trainer_step{job="j",namespace="ns"} 150.0' in generate_latest(m.registry).decode()
    assert not (tmp_path / "metrics.jsonl").exists()


def test_launch_keeps_the_bad_input_status(tmp_path: Path) -> None:
    script = tmp_path / "worker.py"
    script.write_text("import sys\nsys.exit(int(sys.argv[1]))\n")
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
    }
    for code, want in ((2, 2), (3, 1), (0, 0)):
        cmd = [sys.executable, "-m", "mtp_trainer.launch", "--standalone", "--nproc-per-node=1", str(script), str(code)]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env)
        assert proc.returncode == want, proc.stderr[-2000:]
