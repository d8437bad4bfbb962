"""One home per contract: a value of ``mtp_api.contracts`` is spelled there and nowhere else.

Every string constant of the production packages (docstrings aside) is read with ``ast``; one equal
to a contract value (an env name, a label, a port name, a mount path, a file name, a metric name, a
vLLM counter) means a second spelling that a rename would miss. Plain lowercase words (``trainer``,
``metrics``, ``hf``) are too common to check this way.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from mtp_api import contracts

REPO = Path(__file__).resolve().parents[1]
PACKAGES = {
    "mtp_api": "api",
    "mtp_operator": "operator",
    "mtp_trainer": "trainer",
    "mtp_rollout": "rollout",
    "mtpjob": "cli",
}
CONTRACTS = REPO / "api" / "mtp_api" / "contracts.py"


def contract_values() -> dict[str, str]:
    return {
        value: name
        for name, value in vars(contracts).items()
        if name.isupper() and isinstance(value, str) and not re.fullmatch(r"[a-z]+", value)
    }


def second_spellings(source: str, values: dict[str, str]) -> list[tuple[int, str, str]]:
    tree = ast.parse(source)
    docstrings = {
        id(node.body[0].value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef)
        and node.body
        and isinstance(node.body[0], ast.Expr)
        and isinstance(node.body[0].value, ast.Constant)
    }
    return [
        (node.lineno, node.value, values[node.value])
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant)
        and isinstance(node.value, str)
        and id(node) not in docstrings
        and node.value in values
    ]


def test_contracts_hold_the_shared_values() -> None:
    values = contract_values()
    for expected in ("MTP_MODEL_PATH", "mtp.io/job-name", "http-metrics", "/models/source", "mtp_trainer_step"):
        assert expected in values
    assert contracts.pvc_model_path(None) == contracts.MODEL_MOUNT_DIR
    assert contracts.pvc_model_path("qwen/") == contracts.MODEL_MOUNT_DIR + "/qwen"


@pytest.mark.parametrize("package", sorted(PACKAGES))
def test_no_second_spelling_of_a_contract(package: str) -> None:
    values = contract_values()
    found = [
        f"{path.relative_to(REPO)}:{line}: {value!r} is contracts.{name}"
        for path in sorted((REPO / PACKAGES[package] / package).rglob("*.py"))
        if path != CONTRACTS
        for line, value, name in second_spellings(path.read_text(), values)
    ]
    assert not found, "\n".join(found)


def test_a_second_spelling_is_found() -> None:
    source = 'import os\npath = os.environ.get("MTP_MODEL_PATH")\nlabels = {"mtp.io/job-name": "x"}\n'
    assert [name for _, _, name in second_spellings(source, contract_values())] == ["ENV_MODEL_PATH", "LABEL_JOB"]
