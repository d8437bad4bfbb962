"""`mtpjob render` against golden files: the objects the operator applies, reviewed as diffs.

``tests/golden/render/<example>.yaml`` holds what ``mtpjob render examples/<example>.yaml`` printed
when it was last reviewed. After a deliberate change to an example or to the builders, regenerate
every golden file with one command, from the repository root::

    python -m tests.golden.regenerate

and review ``git diff tests/golden/``: the diff is the change to what the operator creates.
"""

from __future__ import annotations

import difflib
from pathlib import Path

import pytest
import yaml

from mtpjob.cli import main
from tests.golden import regenerate as golden
from tests.operator.conftest import job_manifest

EXAMPLES = golden.examples()


def test_every_example_has_a_golden_file_and_no_other() -> None:
    assert EXAMPLES, "no examples found"
    assert sorted(p.name for p in golden.GOLDEN.glob("*.yaml")) == [e.name for e in EXAMPLES], golden.COMMAND


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.stem)
def test_render_matches_the_golden_file(example: Path) -> None:
    want_path = golden.golden_path(example)
    want = want_path.read_text() if want_path.exists() else ""
    got = golden.render(example)
    if got != want:
        diff = "".join(
            difflib.unified_diff(
                want.splitlines(keepends=True), got.splitlines(keepends=True), str(want_path), "mtpjob render", n=2
            )
        )
        pytest.fail(
            f"`mtpjob render {example.name}` differs from its golden file; if intended, run "
            f"`{golden.COMMAND}` and review the diff:\n{diff[:6000]}"
        )


def test_render_namespace_flag_reaches_every_object(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(job_manifest()))  # namespace team-a in the manifest; -n wins
    assert main(["render", str(path), "-n", "ml"]) == 0
    docs = list(yaml.safe_load_all(capsys.readouterr().out))
    assert [(d["kind"], d["metadata"]["name"]) for d in docs] == [
        ("ConfigMap", "demo-config"),
        ("Service", "demo-trainer"),
        ("StatefulSet", "demo-trainer"),
        ("PodDisruptionBudget", "demo-trainer"),
        ("Service", "demo-rollout"),
        ("Deployment", "demo-rollout"),
    ]
    assert [d["metadata"]["namespace"] for d in docs] == ["ml"] * 6
    sts = docs[2]["spec"]["template"]["spec"]["containers"][0]
    assert {"name": "MASTER_ADDR", "value": "demo-trainer-0.demo-trainer.ml.svc"} in sts["env"]
    assert yaml.safe_load(docs[0]["data"]["job.yaml"])["metadata"] == {"name": "demo", "namespace": "ml"}
    assert all("ownerReferences" not in d["metadata"] for d in docs)  # no uid without a cluster


def test_render_explains_what_cannot_be_built(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    body = job_manifest()
    body["spec"]["trainer"]["volumes"] = {}
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(body))
    assert main(["render", str(path)]) == 2  # bad input: contracts.EXIT_INVALID_SPEC, like every command
    err = capsys.readouterr().err
    # the CRD's CEL rule (evaluated by `render` like `validate`) names the field and the fix
    assert "spec.trainer.volumes: the rollout of an sft job" in err
    assert "ReadWriteMany" in err
