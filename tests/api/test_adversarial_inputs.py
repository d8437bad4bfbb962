"""Adversarial inputs: every bad file gets exit status 2, a message naming the file or field, no traceback.

Each case writes its own input under ``tmp_path`` and runs a command the way a user would: the
CLI in-process (``mtpjob.cli.main``) for most, a real subprocess for a few (``python -m mtpjob``
and the trainer's ``python -m mtp_trainer.main``), so that the exit status and the absence of a
Python traceback are what a shell sees. The expected names (files, field paths) are written here
by hand from the API's field names, not taken from the code under test.

Kinds covered: encodings (Latin-1, UTF-16/32, binary, NUL bytes), YAML of the wrong shape (a
string where a mapping belongs, integer/boolean/null keys, dates, ``!!binary``, ``!!set``),
numeric overflow (2^63 seeds, a 1e30 deadline, infinities), deep nesting, alias bombs, oversized
files, broken checkpoint ``config.json`` files, ROLL pipeline configs with words where numbers
belong, zero parallel sizes, unresolved hydra ``${oc.env:...}``, reward entries of the wrong type
and a two-billion-GPU ``device_mapping``; several files at once; the operator's admission.
"""

from __future__ import annotations

import copy
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from mtpjob.cli import main as cli_main

REPO = Path(__file__).resolve().parents[2]
INT64_MAX = 9223372036854775807  # written out: Kubernetes' int64 ceiling

# A minimal valid SFT job, written here rather than read from examples/, so the cases do not move
# when an example changes.
BASE: dict[str, Any] = {
    "apiVersion": "mtp.io/v1alpha1",
    "kind": "MTPTrainingJob",
    "metadata": {"name": "adversary"},
    "spec": {
        "pipeline": "sft",
        "model": {"source": {"huggingFace": {"id": "Qwen/Qwen3.5-7B"}}, "mtpNumLayers": 1},
        "trainer": {
            "mtp": {"trainingMode": "joint"},
            "hyperparameters": {"seed": 7},
            "data": {"trainFiles": ["/data/train.jsonl"]},
        },
    },
}
BASE_YAML = yaml.safe_dump(BASE, sort_keys=False)

# A minimal ROLL SFT pipeline config that converts cleanly (checked by test_roll_base_is_valid).
ROLL_BASE: dict[str, Any] = {
    "exp_name": "adversary",
    "pretrain": "Qwen/Qwen3.5-7B",
    "seed": 42,
    "sft_train": {
        "mtp_training_mode": "joint",
        "mtp_loss_scaling_factor": 0.3,
        "model_args": {"dtype": "bf16"},
        "training_args": {"per_device_train_batch_size": 1, "gradient_accumulation_steps": 1},
        "strategy_args": {
            "strategy_name": "megatron_train",
            "strategy_config": {
                "tensor_model_parallel_size": 1,
                "pipeline_model_parallel_size": 1,
                "mtp_num_layers": 1,
            },
        },
        "data_args": {"file_name": "data/train.jsonl"},
    },
}


# ------------------------------------------------------------------------------------ helpers


def _set(doc: dict[str, Any], dotted: str, value: Any) -> dict[str, Any]:
    out = copy.deepcopy(doc)
    node = out
    *parents, last = dotted.split(".")
    for part in parents:
        node = node.setdefault(part, {})
    node[last] = value
    return out


def manifest_with(dotted: str, value: Any) -> str:
    return yaml.safe_dump(_set(BASE, dotted, value), sort_keys=False)


def roll_with(dotted: str, value: Any) -> str:
    return yaml.safe_dump(_set(ROLL_BASE, dotted, value), sort_keys=False)


def run_cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    """The CLI in-process: exit status and everything it printed."""
    try:
        rc = cli_main(argv)
    except SystemExit as exc:  # argparse's own usage errors
        rc = exc.code if isinstance(exc.code, int) else 1
    captured = capsys.readouterr()
    return rc, captured.out + captured.err


def assert_refused(rc: int, text: str, *names: str) -> None:
    assert "Traceback" not in text, text
    assert rc == 2, f"exit status {rc}, expected 2:\n{text}"
    for name in names:
        assert name in text, f"{name!r} not named in:\n{text}"


@dataclass(frozen=True)
class Case:
    id: str
    content: bytes | str | Callable[[Path], Path]  # the file's bytes/text, or a builder returning the path
    names: tuple[str, ...]  # what the message must name, besides nothing else

    def make(self, tmp_path: Path, filename: str = "input.yaml") -> Path:
        if callable(self.content):
            return self.content(tmp_path)
        path = tmp_path / filename
        if isinstance(self.content, bytes):
            path.write_bytes(self.content)
        else:
            path.write_text(self.content, encoding="utf-8")
        return path


# ------------------------------------------------------------------------------------ manifests

F = "input.yaml"  # every case's file name, which encoding/shape messages must name


def _big_file(tmp_path: Path) -> Path:
    path = tmp_path / F
    path.write_text(BASE_YAML + "# padding\n" * 600_000)
    return path


def _directory(tmp_path: Path) -> Path:
    path = tmp_path / F
    path.mkdir()
    return path


def _alias_bomb() -> str:
    lines = ['a0: ["x","x","x","x","x","x","x","x","x","x"]']
    lines += [f"a{i}: [{','.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 10)]
    text = "\n".join(f"{line.split(':')[0]}: &{line.split(':')[0]} {line.split(': ', 1)[1]}" for line in lines)
    return text + "\n" + BASE_YAML


ENCODING_CASES = [
    Case("latin1", BASE_YAML.replace("adversary", "adversary  # café").encode("latin-1"), (F, "UTF-8")),
    Case(
        "latin1-value",
        BASE_YAML.replace("name: adversary", "name: adversary\n  labels: {team: Ünïcode}").encode("latin-1"),
        (F, "UTF-8"),
    ),
    Case("cp1252-quotes", BASE_YAML.encode() + "# \u201cquoted\u201d\n".encode("cp1252"), (F, "UTF-8")),
    Case("utf16-bom", BASE_YAML.encode("utf-16"), (F, "UTF-16")),
    Case("utf16-le-no-bom", BASE_YAML.encode("utf-16-le"), (F, "UTF-16")),
    Case("utf16-be-no-bom", BASE_YAML.encode("utf-16-be"), (F, "UTF-16")),
    Case("utf32", BASE_YAML.encode("utf-32"), (F, "UTF-16")),
    Case("binary-all-bytes", bytes(range(256)) * 8, (F, "UTF-8")),
    Case("nul-bytes", b"apiVersion: mtp.io/v1alpha1\x00\x00\x00kind: MTPTrainingJob\n", (F, "NUL")),
    Case("png-header", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(64), (F, "UTF-8")),
    Case("gzip", b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\x03" + bytes(range(200, 256)), (F, "UTF-8")),
    Case("empty-file", b"", (F, "no YAML document")),
    Case("only-comments", "# nothing here\n# at all\n", (F, "no YAML document")),
    Case("only-separators", "---\n---\n...\n", (F, "no YAML document")),
    Case("directory", _directory, (F, "not a regular file")),
    Case("too-large", _big_file, (F, "larger than")),
    Case("control-char", "apiVersion: mtp.io/v1alpha1\x07\nkind: MTPTrainingJob\n", (F, "not valid YAML")),
]

SHAPE_CASES = [
    Case("top-level-string", '"just a string"\n', (F, "document 0", "a string", "mapping")),
    Case("top-level-list", "- apiVersion: mtp.io/v1alpha1\n- kind: MTPTrainingJob\n", (F, "a list", "mapping")),
    Case("top-level-int", "42\n", (F, "an integer", "mapping")),
    Case("second-doc-scalar", BASE_YAML + "---\nhello\n", (F, "document 1", "a string")),
    Case("spec-string", manifest_with("spec", "train it please"), ("spec", "object")),
    Case("spec-list", manifest_with("spec", ["pipeline", "sft"]), ("spec", "object")),
    Case("trainer-string", manifest_with("spec.trainer", "megatron"), ("spec.trainer", "object")),
    Case("model-int", manifest_with("spec.model", 7), ("spec.model", "object")),
    Case("source-list", manifest_with("spec.model.source", [1, 2]), ("spec.model.source", "object")),
    Case("hyperparameters-string", manifest_with("spec.trainer.hyperparameters", "fast"), ("hyperparameters",)),
    Case("trainfiles-string", manifest_with("spec.trainer.data.trainFiles", "/data/a.jsonl"), ("trainFiles", "array")),
    Case("trainfiles-mapping", manifest_with("spec.trainer.data.trainFiles", {"a": 1}), ("trainFiles",)),
    Case("metadata-string", manifest_with("metadata", "adversary"), ("metadata.name",)),
    Case("name-int", manifest_with("metadata.name", 12345), ("metadata.name",)),
    Case("name-list", manifest_with("metadata.name", ["a"]), ("metadata.name",)),
    Case("labels-list", manifest_with("metadata.labels", ["a", "b"]), ("metadata.labels",)),
    Case("int-keys-top", "1: 2\n3: 4\n", (F, "key 1", "strings")),
    Case("int-key-in-spec", BASE_YAML.replace("  pipeline: sft", "  pipeline: sft\n  7: seven"), (F, "spec", "key 7")),
    Case("bool-key-yes", BASE_YAML.replace("  pipeline: sft", "  pipeline: sft\n  yes: 1"), (F, "spec", "boolean")),
    Case("bool-key-on", "on: push\n" + BASE_YAML, (F, "boolean")),
    Case("null-key", BASE_YAML.replace("  pipeline: sft", "  pipeline: sft\n  ~: nothing"), (F, "spec", "key None")),
    Case("float-key", BASE_YAML.replace("  pipeline: sft", "  pipeline: sft\n  1.5: x"), (F, "spec", "key 1.5")),
    Case(
        "list-key",
        BASE_YAML.replace("  pipeline: sft", "  pipeline: sft\n  ? [a, b]\n  : x"),
        (F, "not valid YAML", "line 7"),
    ),
    Case("date-seed", BASE_YAML.replace("seed: 7", "seed: 2024-01-01"), ("spec.trainer.hyperparameters.seed",)),
    Case(
        "datetime-steps",
        BASE_YAML.replace("seed: 7", "seed: 7\n      maxSteps: 2024-01-01T10:00:00Z"),
        ("spec.trainer.hyperparameters.maxSteps",),
    ),
    Case("date-as-spec", manifest_with("spec", "2024-01-01").replace("'2024-01-01'", "2024-01-01"), ("spec",)),
    Case(
        "date-as-data",
        BASE_YAML.replace("    data:\n      trainFiles:\n      - /data/train.jsonl", "    data: 2024-01-01"),
        ("spec.trainer.data", "2024-01-01"),
    ),
    Case(
        "binary-tag-name",
        BASE_YAML.replace("name: adversary", "name: !!binary YWR2ZXJzYXJ5"),
        (F, "metadata.name", "!!binary"),
    ),
    Case("binary-tag-top", "apiVersion: !!binary aGVsbG8=\n", (F, "apiVersion", "!!binary")),
    Case(
        "set-tag",
        BASE_YAML.replace("  pipeline: sft", "  pipeline: sft\n  extra: !!set {a, b}"),
        (F, "spec.extra", "!!set"),
    ),
    Case(
        "omap-tag", BASE_YAML.replace("  pipeline: sft", "  pipeline: sft\n  extra: !!omap [a: 1]"), (F, "spec.extra")
    ),
    Case("python-tag", "apiVersion: !!python/object:os.system {}\n", (F, "not valid YAML")),
    Case("unknown-tag", "apiVersion: !vault secret\n", (F, "not valid YAML")),
    Case("yaml-syntax", "apiVersion: [unclosed\n", (F, "not valid YAML")),
    Case("tab-indent", "spec:\n\tpipeline: sft\n", (F, "not valid YAML")),
    Case("undefined-alias", "apiVersion: *nowhere\n", (F, "not valid YAML")),
    Case("alias-bomb", _alias_bomb(), (F, "more than")),
    Case("wrong-kind", BASE_YAML.replace("kind: MTPTrainingJob", "kind: Deployment"), ("apiVersion/kind",)),
    Case("spec-null", manifest_with("spec", None), ("spec",)),
]

NUMERIC_CASES = [
    Case(
        "seed-2^63",
        manifest_with("spec.trainer.hyperparameters.seed", 2**63),
        ("spec.trainer.hyperparameters.seed", "64 bits"),
    ),
    Case(
        "seed-2^64", manifest_with("spec.trainer.hyperparameters.seed", 2**64), ("spec.trainer.hyperparameters.seed",)
    ),
    Case(
        "seed-2^32",
        manifest_with("spec.trainer.hyperparameters.seed", 2**32),
        ("spec.trainer.hyperparameters.seed", "4294967296"),
    ),
    Case(
        "seed-int64-max",
        manifest_with("spec.trainer.hyperparameters.seed", INT64_MAX),
        ("spec.trainer.hyperparameters.seed",),
    ),
    Case(
        "seed-negative", manifest_with("spec.trainer.hyperparameters.seed", -1), ("spec.trainer.hyperparameters.seed",)
    ),
    Case(
        "seed-float",
        manifest_with("spec.trainer.hyperparameters.seed", 1.5),
        ("spec.trainer.hyperparameters.seed", "integer"),
    ),
    Case(
        "seed-word", manifest_with("spec.trainer.hyperparameters.seed", "lucky"), ("spec.trainer.hyperparameters.seed",)
    ),
    Case(
        "deadline-1e30-float",
        manifest_with("spec.runPolicy.activeDeadlineSeconds", 1e30),
        ("spec.runPolicy.activeDeadlineSeconds", "integer"),
    ),
    Case(
        "deadline-10^30-int",
        manifest_with("spec.runPolicy.activeDeadlineSeconds", 10**30),
        ("spec.runPolicy.activeDeadlineSeconds", "64 bits"),
    ),
    Case(
        "deadline-int64+1",
        manifest_with("spec.runPolicy.activeDeadlineSeconds", INT64_MAX + 1),
        ("spec.runPolicy.activeDeadlineSeconds",),
    ),
    Case(
        "ttl-2^63",
        manifest_with("spec.runPolicy.ttlSecondsAfterFinished", 2**63),
        ("spec.runPolicy.ttlSecondsAfterFinished",),
    ),
    Case(
        "maxsteps-2^70",
        manifest_with("spec.trainer.hyperparameters.maxSteps", 2**70),
        ("spec.trainer.hyperparameters.maxSteps",),
    ),
    Case(
        "warmup-huge",
        manifest_with("spec.trainer.hyperparameters.warmupSteps", 10**40),
        ("spec.trainer.hyperparameters.warmupSteps",),
    ),
    Case(
        "microbatch-10^20",
        manifest_with("spec.trainer.hyperparameters.microBatchSize", 10**20),
        ("spec.trainer.hyperparameters.microBatchSize",),
    ),
    Case(
        "lr-inf",
        BASE_YAML.replace("seed: 7", "seed: 7\n      learningRate: .inf"),
        ("spec.trainer.hyperparameters.learningRate", "finite"),
    ),
    Case(
        "clipgrad-nan",
        BASE_YAML.replace("seed: 7", "seed: 7\n      clipGrad: .nan"),
        ("spec.trainer.hyperparameters.clipGrad", "finite"),
    ),
    Case(
        "lr-1e400",
        BASE_YAML.replace("seed: 7", "seed: 7\n      learningRate: 1e400"),
        ("spec.trainer.hyperparameters.learningRate",),
    ),
    Case(
        "resources-cpu-10^40",
        manifest_with("spec.trainer.resources", {"requests": {"cpu": 10**40}}),
        ("spec.trainer.resources.requests.cpu",),
    ),
    Case("metrics-port-10^19", manifest_with("spec.trainer.metricsPort", 10**19), ("spec.trainer.metricsPort",)),
    Case("replicas-negative-huge", manifest_with("spec.trainer.replicas", -(2**64)), ("spec.trainer.replicas",)),
    Case("mtp-layers-bool", manifest_with("spec.model.mtpNumLayers", True), ("spec.model.mtpNumLayers",)),
]

DEEP_CASES = [
    Case("flow-list-100k", "[" * 100_000 + "]" * 100_000 + "\n", (F, "nested too deeply")),
    Case("flow-map-20k", "{a: " * 20_000 + "1" + "}" * 20_000 + "\n", (F, "nested")),
    Case(
        "block-map-100",
        "".join("  " * i + f"k{i}:\n" for i in range(100)) + "  " * 100 + "v: 1\n",
        (F, "nested more than"),
    ),
    Case(
        "deep-under-spec", manifest_with("spec.trainer.data", {"x": [[[[[[[[[[[[1]]]]]]]]]]]]}), ("spec.trainer.data",)
    ),
    Case(
        "deep-labels",
        BASE_YAML.replace("name: adversary", "name: adversary\n  labels: " + "[" * 300 + "]" * 300),
        (F, "nested"),
    ),
]


def _checkpoint(config: bytes | str) -> Callable[[Path], Path]:
    def make(tmp_path: Path) -> Path:
        ckpt = tmp_path / "ckpt"
        ckpt.mkdir()
        data = config.encode() if isinstance(config, str) else config
        (ckpt / "config.json").write_bytes(data)
        doc = _set(BASE, "spec.model.source", {"path": "./ckpt"})
        path = tmp_path / F
        path.write_text(yaml.safe_dump(doc))
        return path

    return make


CHECKPOINT_CASES = [
    Case(
        "config-malformed",
        _checkpoint('{"mtp_num_hidden_layers": 1,'),
        ("spec.model.source.path", "config.json", "not valid JSON"),
    ),
    Case("config-list", _checkpoint("[1, 2, 3]"), ("spec.model.source.path", "config.json", "a list")),
    Case("config-string", _checkpoint('"qwen"'), ("spec.model.source.path", "config.json", "a string")),
    Case("config-null", _checkpoint("null"), ("spec.model.source.path", "config.json", "null")),
    Case(
        "config-latin1",
        _checkpoint('{"name": "café"}'.encode("latin-1")),
        ("spec.model.source.path", "config.json", "UTF-8"),
    ),
    Case("config-utf16", _checkpoint('{"mtp_num_hidden_layers": 1}'.encode("utf-16")), ("config.json", "UTF-16")),
    Case("config-binary", _checkpoint(bytes(range(256))), ("spec.model.source.path", "config.json")),
    Case("config-empty", _checkpoint(""), ("spec.model.source.path", "config.json", "not valid JSON")),
    Case("config-deep", _checkpoint("[" * 100_000 + "]" * 100_000), ("spec.model.source.path", "config.json")),
    Case("config-mismatch", _checkpoint('{"mtp_num_hidden_layers": 2}'), ("spec.model.mtpNumLayers", "config.json")),
    Case(
        "config-huge-layers",
        _checkpoint('{"mtp_num_hidden_layers": 100000000000000000000000}'),
        ("spec.model.source.path", "config.json", "64 bits"),
    ),
]

MANIFEST_CASES = ENCODING_CASES + SHAPE_CASES + NUMERIC_CASES + DEEP_CASES + CHECKPOINT_CASES


@pytest.mark.parametrize("command", ["validate", "render"])
@pytest.mark.parametrize("case", MANIFEST_CASES, ids=lambda c: c.id)
def test_manifest_is_refused(case: Case, command: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = case.make(tmp_path)
    rc, text = run_cli([command, str(path)], capsys)
    assert_refused(rc, text, *case.names)


def test_base_manifest_is_valid(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The cases above fail because of their one change, not because the base is broken."""
    path = tmp_path / F
    path.write_text(BASE_YAML)
    rc, text = run_cli(["validate", str(path)], capsys)
    assert rc == 0, text
    rc, text = run_cli(["render", str(path)], capsys)
    assert rc == 0, text


# ------------------------------------------------------------------------------------ several files


def test_every_file_is_checked_when_some_fail(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = tmp_path / "good.yaml"
    good.write_text(BASE_YAML)
    latin = tmp_path / "latin.yaml"
    latin.write_bytes("# café\n".encode("latin-1") + BASE_YAML.encode())
    seed = tmp_path / "seed.yaml"
    seed.write_text(manifest_with("spec.trainer.hyperparameters.seed", 2**63))
    deep = tmp_path / "deep.yaml"
    deep.write_text("[" * 50_000 + "]" * 50_000)
    good2 = tmp_path / "good2.yaml"
    good2.write_text(BASE_YAML.replace("name: adversary", "name: adversary-two"))
    files = [good, latin, tmp_path / "missing.yaml", seed, deep, good2]
    rc, text = run_cli(["validate", *map(str, files)], capsys)
    assert_refused(
        rc, text, "latin.yaml", "missing.yaml", "seed.yaml", "spec.trainer.hyperparameters.seed", "deep.yaml"
    )
    assert f"{good}: ok (adversary)" in text
    assert f"{good2}: ok (adversary-two)" in text


def test_one_bad_document_of_several(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "multi.yaml"
    path.write_text(BASE_YAML + "---\n" + manifest_with("spec.trainer.hyperparameters.seed", 2**32))
    rc, text = run_cli(["validate", str(path)], capsys)
    assert_refused(rc, text, f"{path}[1]", "spec.trainer.hyperparameters.seed")
    assert f"{path}[0]: ok (adversary)" in text


def test_render_rejects_a_bad_namespace(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / F
    path.write_text(BASE_YAML)
    rc, text = run_cli(["render", str(path), "-n", "Team_A\n"], capsys)
    assert_refused(rc, text, "--namespace")


# ------------------------------------------------------------------------------------ import-roll


def _roll_checkpoint(config: str | bytes) -> Callable[[Path], Path]:
    def make(tmp_path: Path) -> Path:
        ckpt = tmp_path / "Qwen3.5-7B"
        ckpt.mkdir()
        (ckpt / "config.json").write_bytes(config.encode() if isinstance(config, str) else config)
        doc = _set(ROLL_BASE, "pretrain", "./Qwen3.5-7B")
        del doc["sft_train"]["strategy_args"]["strategy_config"]["mtp_num_layers"]
        path = tmp_path / F
        path.write_text(yaml.safe_dump(doc))
        return path

    return make


SC = "sft_train.strategy_args.strategy_config"
TA = "sft_train.training_args"
ROLL_CASES = [
    # words, fractions and unresolved references where numbers belong
    Case(
        "tp-word", roll_with(f"{SC}.tensor_model_parallel_size", "two"), (f"{SC}.tensor_model_parallel_size", "'two'")
    ),
    Case("pp-word", roll_with(f"{SC}.pipeline_model_parallel_size", "four"), (f"{SC}.pipeline_model_parallel_size",)),
    Case(
        "tp-zero-string",
        roll_with(f"{SC}.tensor_model_parallel_size", "0"),
        (f"{SC}.tensor_model_parallel_size", "from 1"),
    ),
    Case(
        "pp-zero-string", roll_with(f"{SC}.pipeline_model_parallel_size", "0"), (f"{SC}.pipeline_model_parallel_size",)
    ),
    Case("tp-zero-int", roll_with(f"{SC}.tensor_model_parallel_size", 0), (f"{SC}.tensor_model_parallel_size",)),
    Case("tp-negative", roll_with(f"{SC}.tensor_model_parallel_size", -2), (f"{SC}.tensor_model_parallel_size",)),
    Case("tp-fraction", roll_with(f"{SC}.tensor_model_parallel_size", 1.5), (f"{SC}.tensor_model_parallel_size",)),
    Case("tp-list", roll_with(f"{SC}.tensor_model_parallel_size", [1, 2]), (f"{SC}.tensor_model_parallel_size",)),
    Case("tp-bool", roll_with(f"{SC}.tensor_model_parallel_size", True), (f"{SC}.tensor_model_parallel_size",)),
    Case(
        "tp-oc-env-unset",
        roll_with(f"{SC}.tensor_model_parallel_size", "${oc.env:MTP_ADVERSARY_UNSET}"),
        (f"{SC}.tensor_model_parallel_size", "MTP_ADVERSARY_UNSET"),
    ),
    Case(
        "lr-oc-env-unset",
        roll_with(f"{TA}.learning_rate", "${oc.env:MTP_ADVERSARY_UNSET}"),
        (f"{TA}.learning_rate", "oc.env"),
    ),
    Case("seed-missing-key", roll_with("seed", "${no.such.key}"), ("seed", "no.such.key")),
    Case(
        "micro-batch-word",
        roll_with(f"{TA}.per_device_train_batch_size", "eight"),
        (f"{TA}.per_device_train_batch_size",),
    ),
    Case("accum-word", roll_with(f"{TA}.gradient_accumulation_steps", "many"), (f"{TA}.gradient_accumulation_steps",)),
    Case("lr-word", roll_with(f"{TA}.learning_rate", "fast"), (f"{TA}.learning_rate", "number")),
    Case("lr-inf-string", roll_with(f"{TA}.learning_rate", "inf"), (f"{TA}.learning_rate",)),
    Case("warmup-word", roll_with(f"{TA}.warmup_steps", "some"), (f"{TA}.warmup_steps",)),
    Case("max-steps-word", roll_with("max_steps", "forever"), ("max_steps",)),
    Case("max-steps-1e30", roll_with("max_steps", 1e30), ("max_steps",)),
    Case("seed-2^32", roll_with("seed", 2**32), ("spec.trainer.hyperparameters.seed",)),
    Case("seed-2^63", roll_with("seed", 2**63), ("seed", "64 bits")),
    Case("seq-word", roll_with("sequence_length", "long"), ("sequence_length",)),
    Case("prompt-length-word", roll_with("prompt_length", "short"), ("prompt_length",)),
    Case("gpus-per-node-word", roll_with("num_gpus_per_node", "eight"), ("num_gpus_per_node",)),
    Case("mtp-layers-word", roll_with(f"{SC}.mtp_num_layers", "one"), (f"{SC}.mtp_num_layers",)),
    Case(
        "loss-scale-word",
        roll_with("sft_train.mtp_loss_scaling_factor", "a third"),
        ("sft_train.mtp_loss_scaling_factor",),
    ),
    Case("interpolation-loop", roll_with("seed", "${seed}"), ("interpolation loop",)),
    # device_mapping
    Case(
        "devices-two-billion",
        roll_with("sft_train.device_mapping", "list(range(0,2000000000))"),
        ("sft_train.device_mapping", "2000000000"),
    ),
    Case(
        "devices-zero-step", roll_with("sft_train.device_mapping", "list(range(0,8,0))"), ("sft_train.device_mapping",)
    ),
    Case("devices-negative", roll_with("sft_train.device_mapping", "list(range(-4,4))"), ("sft_train.device_mapping",)),
    Case("devices-words", roll_with("sft_train.device_mapping", "[a, b]"), ("sft_train.device_mapping",)),
    Case("devices-mixed-list", roll_with("sft_train.device_mapping", [0, "one"]), ("sft_train.device_mapping",)),
    Case("devices-int", roll_with("sft_train.device_mapping", 8), ("sft_train.device_mapping",)),
    Case(
        "devices-deep-literal",
        roll_with("sft_train.device_mapping", "(" * 5000 + ")" * 5000),
        ("sft_train.device_mapping",),
    ),
    Case("devices-dict-literal", roll_with("sft_train.device_mapping", "{'a': 1}"), ("sft_train.device_mapping",)),
    # rewards of the wrong type (an RLVR config)
    Case("reward-string", roll_with("rewards", {"math": "yes"}), ("rewards.math", "mapping")),
    Case("reward-list", roll_with("rewards", {"math": [1, 2]}), ("rewards.math",)),
    Case("reward-int", roll_with("rewards", {"code": 5}), ("rewards.code",)),
    # file names and the model
    Case("file-name-int", roll_with("sft_train.data_args.file_name", 5), ("sft_train.data_args.file_name",)),
    Case(
        "file-name-list-of-ints", roll_with("sft_train.data_args.file_name", [1, 2]), ("sft_train.data_args.file_name",)
    ),
    Case(
        "validation-file-mapping",
        roll_with("validation", {"data_args": {"file_name": {"a": 1}}}),
        ("validation.data_args.file_name",),
    ),
    Case("pretrain-list", roll_with("pretrain", ["Qwen/Qwen3.5-7B"]), ("pretrain",)),
    Case("pretrain-garbage", roll_with("pretrain", "not a model id!"), ("pretrain", "Hugging Face id")),
    Case("no-worker", yaml.safe_dump({"exp_name": "x", "pretrain": "Qwen/Qwen3.5-7B"}), ("actor_train", "sft_train")),
    # the file itself
    Case("roll-latin1", yaml.safe_dump(ROLL_BASE).encode() + "# café\n".encode("latin-1"), (F, "UTF-8")),
    Case("roll-utf16", yaml.safe_dump(ROLL_BASE).encode("utf-16"), (F, "UTF-16")),
    Case("roll-binary", bytes(range(256)) * 4, (F, "UTF-8")),
    Case("roll-list", "- a\n- b\n", (F, "a list")),
    Case("roll-string", "rlvr\n", (F, "a string")),
    Case("roll-two-docs", yaml.safe_dump(ROLL_BASE) + "---\n" + yaml.safe_dump(ROLL_BASE), (F, "2 YAML documents")),
    Case("roll-int-keys", "1: 2\n", (F, "key 1")),
    Case("roll-deep", "[" * 100_000 + "]" * 100_000, (F, "nested")),
    Case("roll-missing", lambda tmp: tmp / "nope.yaml", ("nope.yaml", "no such file")),
    # checkpoint config.json read through pretrain
    Case("roll-config-malformed", _roll_checkpoint("{nope"), ("pretrain", "config.json", "not valid JSON")),
    Case("roll-config-list", _roll_checkpoint("[]"), ("pretrain", "config.json", "a list")),
    Case("roll-config-latin1", _roll_checkpoint('{"x": "é"}'.encode("latin-1")), ("pretrain", "config.json", "UTF-8")),
]


@pytest.mark.parametrize("case", ROLL_CASES, ids=lambda c: c.id)
def test_roll_config_is_refused(
    case: Case, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MTP_ADVERSARY_UNSET", raising=False)
    path = case.make(tmp_path)
    rc, text = run_cli(["import-roll", str(path)], capsys)
    assert_refused(rc, text, *case.names)


def test_roll_base_is_valid(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "roll.yaml"
    path.write_text(yaml.safe_dump(ROLL_BASE))
    rc, text = run_cli(["import-roll", str(path)], capsys)
    assert rc == 0, text


def test_import_roll_output_that_cannot_be_written(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "roll.yaml"
    path.write_text(yaml.safe_dump(ROLL_BASE))
    rc, text = run_cli(["import-roll", str(path), "-o", str(tmp_path / "no" / "such" / "dir.yaml")], capsys)
    assert_refused(rc, text, "--output")


# ------------------------------------------------------------------------------------ subprocesses

SUBPROCESS_CASES = [
    ("validate", Case("latin1", BASE_YAML.encode() + "# café\n".encode("latin-1"), (F, "UTF-8"))),
    (
        "render",
        Case(
            "seed-2^63",
            manifest_with("spec.trainer.hyperparameters.seed", 2**63),
            ("spec.trainer.hyperparameters.seed",),
        ),
    ),
    (
        "import-roll",
        Case(
            "devices-two-billion",
            roll_with("sft_train.device_mapping", "list(range(0,2000000000))"),
            ("device_mapping",),
        ),
    ),
    ("validate", Case("flow-list-100k", "[" * 100_000 + "]" * 100_000, (F, "nested"))),
]


@pytest.mark.parametrize(("command", "case"), SUBPROCESS_CASES, ids=lambda v: v if isinstance(v, str) else v.id)
def test_cli_process_exits_2_without_traceback(command: str, case: Case, tmp_path: Path) -> None:
    path = case.make(tmp_path)
    proc = subprocess.run(
        [sys.executable, "-m", "mtpjob", command, str(path)], capture_output=True, text=True, timeout=300, cwd=REPO
    )
    assert_refused(proc.returncode, proc.stdout + proc.stderr, *case.names)


TRAINER_JOB = {
    **BASE,
    "spec": {
        **BASE["spec"],
        "model": {
            "source": {"tiny": {"hiddenSize": 64, "numLayers": 2, "numAttentionHeads": 2, "numKeyValueHeads": 1}},
            "family": "qwen3_next",
            "dtype": "float32",
            "mtpNumLayers": 1,
        },
        "trainer": {**BASE["spec"]["trainer"], "gpusPerReplica": 0},
    },
}
TRAINER_YAML = yaml.safe_dump(TRAINER_JOB, sort_keys=False)

TRAINER_CASES = [
    Case("latin1", TRAINER_YAML.encode() + "# café\n".encode("latin-1"), (F, "UTF-8")),
    Case("seed-2^63", TRAINER_YAML.replace("seed: 7", f"seed: {2**63}"), ("spec.trainer.hyperparameters.seed",)),
    Case(
        "binary-tag",
        TRAINER_YAML.replace("name: adversary", "name: !!binary YWR2ZXJzYXJ5"),
        (F, "metadata.name", "!!binary"),
    ),
    Case("deep", "[" * 100_000 + "]" * 100_000, (F, "nested")),
    Case("spec-string", TRAINER_YAML.split("spec:")[0] + "spec: train\n", ("spec",)),
]


@pytest.mark.parametrize("case", TRAINER_CASES, ids=lambda c: c.id)
def test_trainer_exits_2_without_traceback(case: Case, tmp_path: Path) -> None:
    path = case.make(tmp_path)
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run(
        [sys.executable, "-m", "mtp_trainer.main", "--job", str(path), "--output-dir", str(tmp_path / "out")],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=REPO,
        env=env,
    )
    assert_refused(proc.returncode, proc.stdout + proc.stderr, *case.names)


def test_trainer_base_job_is_valid(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The trainer cases fail for their one change: the base job passes validation."""
    path = tmp_path / F
    path.write_text(TRAINER_YAML)
    rc, text = run_cli(["validate", str(path)], capsys)
    assert rc == 0, text


# ------------------------------------------------------------------------------------ operator admission

ADMISSION_CASES = [
    ("spec-string", _set(BASE, "spec", "train"), "spec"),
    ("seed-2^63", _set(BASE, "spec.trainer.hyperparameters.seed", 2**63), "spec.trainer.hyperparameters.seed"),
    ("seed-2^32", _set(BASE, "spec.trainer.hyperparameters.seed", 2**32), "spec.trainer.hyperparameters.seed"),
    (
        "deadline-10^30",
        _set(BASE, "spec.runPolicy.activeDeadlineSeconds", 10**30),
        "spec.runPolicy.activeDeadlineSeconds",
    ),
    (
        "tp-above-world",
        _set(_set(BASE, "spec.trainer.gpusPerReplica", 1), "spec.trainer.strategy", {"tensorParallelSize": 2}),
        "spec.trainer.strategy",
    ),
]


@pytest.mark.parametrize(("body", "field"), [c[1:] for c in ADMISSION_CASES], ids=[c[0] for c in ADMISSION_CASES])
def test_operator_admission_names_the_field(body: dict[str, Any], field: str) -> None:
    """The operator reads jobs from the API server (CEL skipped); a bad one is refused with a reason."""
    from mtp_operator.reconcile import parse_job

    job, reason = parse_job(body)
    assert job is None
    assert reason is not None and field in reason, reason
