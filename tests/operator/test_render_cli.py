"""`mtpjob render` prints exactly what the operator's builders produce."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from mtp_api.validation import load_job
from mtp_operator.children import desired_children
from mtpjob.cli import main
from tests.operator.conftest import job_manifest


def test_render_prints_the_children(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(job_manifest()))
    assert main(["render", str(path), "-n", "ml"]) == 0
    docs = list(yaml.safe_load_all(capsys.readouterr().out))
    assert [d["kind"] for d in docs] == ["ConfigMap", "Service", "StatefulSet", "Service", "Deployment"]
    assert all(d["metadata"]["namespace"] == "ml" for d in docs)
    job = load_job(path)
    job.metadata.namespace = "ml"
    assert docs == desired_children(job)


def test_render_explains_what_cannot_be_built(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    body = job_manifest()
    body["spec"]["trainer"]["volumes"] = {}
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(body))
    assert main(["render", str(path)]) == 1
    err = capsys.readouterr().err
    # the CRD's CEL rule (evaluated by `render` like `validate`) names the field and the fix
    assert "spec.trainer.volumes: the rollout of an sft job" in err and "ReadWriteMany" in err
