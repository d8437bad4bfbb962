"""`mtpjob score RECORDS.jsonl --job JOB.yaml`, in process."""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path

import pytest

from mtpjob.cli import main

JOB = """\
apiVersion: mtp.io/v1alpha1
kind: MTPTrainingJob
metadata: {name: score-test}
spec:
  pipeline: sft
  model:
    source: {tiny: {hiddenSize: 64, numLayers: 2, numAttentionHeads: 2, numKeyValueHeads: 1,
                    ffnHiddenSize: 192, vocabSize: 512}}
    family: qwen3_next
    dtype: float32
    mtpNumLayers: 1
  trainer:
    gpusPerReplica: 0
    mtp: {trainingMode: joint}
    data: {trainFiles: ["builtin:arithmetic"]}
"""


def _write(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def _out(capsys: pytest.CaptureFixture[str]) -> tuple[list[dict[str, object]], str]:
    cap = capsys.readouterr()
    return [json.loads(line) for line in cap.out.splitlines()], cap.err


def test_scores_with_the_job_reward(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    job = tmp_path / "job.yaml"
    job.write_text(
        JOB
        + "  reward:\n    math: {answerFormat: last_number, correctReward: 2.0, incorrectReward: -1.0, formatPenalty: -0.5}\n"
    )
    recs = _write(
        tmp_path / "r.jsonl",
        [
            json.dumps({"response": "So it is 843 apples.", "answer": "843"}),
            json.dumps({"response": "It is 1/2", "answer": 0.5}),
            json.dumps({"response": "no idea", "answer": "3"}),
            json.dumps({"response": "it is 4", "answer": "3"}),
        ],
    )
    assert main(["score", str(recs), "--job", str(job)]) == 0
    out, err = _out(capsys)
    assert [o["score"] for o in out] == [2.0, 2.0, -1.5, -1.0]
    assert [o["line"] for o in out] == [1, 2, 3, 4]
    assert out[0] == {"line": 1, "score": 2.0, "correct": True, "parsed": "843", "parse_failed": False}
    assert out[2]["parse_failed"] is True and out[2]["parsed"] is None
    assert "scored 4 records (last_number)" in err and "2 correct, 1 parse failures" in err


def test_default_reward_without_spec_reward_or_job(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    job = tmp_path / "job.yaml"
    job.write_text(JOB)  # an sft job: no spec.reward, so the default MathReward (boxed, 1 / 0 / 0)
    recs = _write(
        tmp_path / "r.jsonl",
        [
            json.dumps(
                {"response": "First, 99 * 8 = 792. Then 51 + 792 = 843. The answer is \\boxed{843}.", "answer": "843"}
            ),
            json.dumps({"response": "The answer is 843.", "answer": "843"}),
        ],
    )
    for argv in (["score", str(recs), "--job", str(job)], ["score", str(recs)]):
        assert main(argv) == 0
        out, _ = _out(capsys)
        assert [(o["score"], o["correct"], o["parse_failed"]) for o in out] == [(1.0, True, False), (0.0, False, True)]


def test_bad_lines_are_reported_and_the_rest_scored(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    recs = _write(
        tmp_path / "r.jsonl",
        [
            json.dumps({"response": "\\boxed{1}", "answer": "1"}),
            "{not json",
            json.dumps({"response": "\\boxed{2}"}),
            "",
            json.dumps(["a", "list"]),
            json.dumps({"response": 5, "answer": "5"}),
            json.dumps({"response": "\\boxed{-3}", "answer": "-3"}),
        ],
    )
    assert main(["score", str(recs)]) == 2
    out, err = _out(capsys)
    assert [(o["line"], o["score"]) for o in out] == [(1, 1.0), (7, 1.0)]
    assert f"{recs}:2: not JSON" in err
    assert f"{recs}:3: missing key 'answer'" in err and "--answer-key" in err
    assert f"{recs}:5: a JSON list" in err
    assert f"{recs}:6: 'response' must be a string" in err
    assert "Traceback" not in err
    assert "4 bad lines skipped" in err


def test_custom_keys_and_stdin(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    line = json.dumps({"output": "\\boxed{\\frac{1}{2}}", "gt": "0.5"}) + "\n"
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(line.encode())))
    assert main(["score", "-", "--response-key", "output", "--answer-key", "gt"]) == 0
    out, _ = _out(capsys)
    assert out == [{"line": 1, "score": 1.0, "correct": True, "parsed": "\\frac{1}{2}", "parse_failed": False}]


def test_missing_inputs_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    recs = _write(tmp_path / "r.jsonl", [json.dumps({"response": "\\boxed{1}", "answer": "1"})])
    assert main(["score", str(tmp_path / "nope.jsonl")]) == 2
    assert "nope.jsonl: no such file" in capsys.readouterr().err
    assert main(["score", str(recs), "--job", str(tmp_path / "nope.yaml")]) == 2
    assert "nope.yaml: no such file" in capsys.readouterr().err
    bad_job = tmp_path / "bad.yaml"
    bad_job.write_text(JOB.replace("pipeline: sft", "pipeline: nonsense"))
    assert main(["score", str(recs), "--job", str(bad_job)]) == 2
    err = capsys.readouterr().err
    assert "is not a valid MTPTrainingJob" in err and "Traceback" not in err
    (tmp_path / "latin1.jsonl").write_bytes(b'{"response": "\\\\boxed{1}", "answer": "1"}\n{"response": "\xe9"}\n')
    assert main(["score", str(tmp_path / "latin1.jsonl")]) == 2
    out, err = _out(capsys)
    assert [o["line"] for o in out] == [1]
    assert "latin1.jsonl:2: not UTF-8" in err
