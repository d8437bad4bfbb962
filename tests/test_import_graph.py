"""The import graph flows one way: api <- trainer, api <- rollout <- operator, and the CLI on top.

Every import in the production packages (module level, inside functions, under ``TYPE_CHECKING``)
is read with ``ast``, without importing anything, and checked against these rules:

- ``mtp_api`` imports none of ours; ``mtp_trainer`` and ``mtp_rollout`` import only ``mtp_api``
  (the trainer reads vLLM's counters through ``mtp_api.exposition`` / ``mtp_api.acceptance``, so
  it never needs the rollout);
- ``mtp_operator`` imports ``mtp_api`` and, of the rollout, only ``mtp_rollout.interface`` (how to
  launch the server, how to read acceptance);
- ``mtpjob`` (the CLI, with the local runs under ``mtpjob.local``) may import everything;
- inside ``mtp_rollout``: ``runtime`` and ``metrics`` do not know each other, ``observability``
  reads only ``metrics`` (the names), ``interface`` sees both;
- no production module imports test support (``tests``, ``kmock``, ``pytest``).
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = {
    "mtp_api": REPO / "api" / "mtp_api",
    "mtp_trainer": REPO / "trainer" / "mtp_trainer",
    "mtp_rollout": REPO / "rollout" / "mtp_rollout",
    "mtp_operator": REPO / "operator" / "mtp_operator",
    "mtpjob": REPO / "cli" / "mtpjob",
}
# Which of our packages each package may import (itself always).
ALLOWED = {
    "mtp_api": set(),
    "mtp_trainer": {"mtp_api"},
    "mtp_rollout": {"mtp_api"},
    "mtp_operator": {"mtp_api", "mtp_rollout"},
    "mtpjob": {"mtp_api", "mtp_trainer", "mtp_rollout", "mtp_operator"},
}
# Where an allowed edge is narrowed to one module.
NARROW = {("mtp_operator", "mtp_rollout"): "mtp_rollout.interface"}
# Inside the rollout: which parts each part may import (itself always).
ROLLOUT_PARTS = {
    "runtime": {"speculation"},
    "metrics": set(),
    "observability": {"metrics"},
    "interface": {"runtime", "metrics", "speculation"},
    "testing": set(),
    # The k schedule: pure cost model, schedule choice and controller policy (no vLLM, no I/O).
    "speculation": set(),
}
TEST_ONLY = {"tests", "kmock", "pytest"}


def module_name(path: Path, package: str, root: Path) -> str:
    rel = path.relative_to(root).with_suffix("")
    parts = [package, *rel.parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported(source: str, module: str, is_package: bool = False) -> Iterator[tuple[int, str]]:
    """(line, dotted target) of every import; ``from a import b`` gives ``a.b`` (b may be a module)."""
    tree = ast.parse(source)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = module.split(".")
                anchor = anchor if is_package else anchor[:-1]
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:
                yield node.lineno, f"{base}.{alias.name}" if base else alias.name


def _within(target: str, prefix: str) -> bool:
    return target == prefix or target.startswith(prefix + ".")


def violations(module: str, source: str, is_package: bool = False) -> list[str]:
    """The imports of ``module`` (dotted, ours) that go against the rules above."""
    src_pkg = module.split(".")[0]
    out = []
    part = module.split(".")[1] if src_pkg == "mtp_rollout" and "." in module else None
    if part is not None and part not in ROLLOUT_PARTS:
        out.append(f"{module}: mtp_rollout holds only {sorted(ROLLOUT_PARTS)}; local runs live in mtpjob.local")
    for line, target in imported(source, module, is_package):
        top = target.split(".")[0]
        where = f"{module}:{line} imports {target}"
        if top in TEST_ONLY:
            out.append(f"{where}: test support in a production package")
            continue
        if top not in ALLOWED or top == src_pkg:
            if top == src_pkg == "mtp_rollout":
                out += _rollout_part_violation(module, target, where)
            continue
        if top not in ALLOWED[src_pkg]:
            out.append(f"{where}: {src_pkg} may import only {sorted(ALLOWED[src_pkg]) or 'none of ours'}")
        elif (src_pkg, top) in NARROW and not _within(target, NARROW[(src_pkg, top)]):
            out.append(f"{where}: {src_pkg} may import {top} only through {NARROW[(src_pkg, top)]}")
    return out


def _rollout_part_violation(module: str, target: str, where: str) -> list[str]:
    src = module.split(".")
    dst = target.split(".")
    if len(src) < 2 or len(dst) < 2:
        return []  # the package's own __init__, or ``import mtp_rollout``
    src_part, dst_part = src[1], dst[1]
    if src_part not in ROLLOUT_PARTS or dst_part == src_part or dst_part in ROLLOUT_PARTS[src_part]:
        return []
    return [f"{where}: mtp_rollout.{src_part} may import only {sorted(ROLLOUT_PARTS[src_part]) or 'itself'}"]


def production_modules() -> Iterator[tuple[str, Path]]:
    for package, root in PACKAGES.items():
        for path in sorted(root.rglob("*.py")):
            yield module_name(path, package, root), path


def test_every_package_is_read() -> None:
    counts = {p: sum(1 for _ in root.rglob("*.py")) for p, root in PACKAGES.items()}
    assert all(n > 0 for n in counts.values()), counts


@pytest.mark.parametrize("package", sorted(PACKAGES))
def test_imports_flow_one_way(package: str) -> None:
    found = []
    for module, path in production_modules():
        if module.split(".")[0] == package:
            found += violations(module, path.read_text(), is_package=path.name == "__init__.py")
    assert not found, "\n".join(found)


def test_the_operator_uses_the_rollout_interface() -> None:
    """Not vacuous: the operator does reach the rollout, and only through the interface."""
    targets = {
        target
        for module, path in production_modules()
        if module.startswith("mtp_operator")
        for _, target in imported(path.read_text(), module)
        if target.startswith("mtp_rollout")
    }
    assert targets and all(_within(t, "mtp_rollout.interface") for t in targets), sorted(targets)


@pytest.mark.parametrize(
    ("module", "source", "message"),
    [
        ("mtp_api.types", "from mtp_operator import names", "mtp_api may import only none of ours"),
        ("mtp_trainer.rlvr", "def f():\n    from mtp_rollout.metrics import collector", "mtp_trainer may import only"),
        ("mtp_rollout.runtime.launcher", "import mtp_trainer.config", "mtp_rollout may import only"),
        ("mtp_operator.scraping", "from mtp_rollout.metrics.collector import Collector", "only through"),
        ("mtp_operator.builders.rollout", "from mtp_rollout import runtime", "only through"),
        ("mtp_rollout.interface", "from mtp_operator import names", "mtp_rollout may import only"),
        ("mtp_rollout.runtime.server", "from ..metrics import collector", "mtp_rollout.runtime may import only"),
        ("mtp_rollout.metrics.status", "from mtp_rollout.observability import rules", "metrics may import only"),
        ("mtp_rollout.local_run", "import json", "local runs live in mtpjob.local"),
        ("mtp_operator.main", "import kmock", "test support"),
        ("mtp_operator.main", "from tests.apiserver.harness import wait_for", "test support"),
    ],
)
def test_the_checker_catches_a_backward_edge(module: str, source: str, message: str) -> None:
    found = violations(module, source)
    assert found and all(message in v for v in found), found


@pytest.mark.parametrize(
    ("module", "source"),
    [
        ("mtp_operator.scraping", "from mtp_rollout.interface import Collector"),
        ("mtp_operator.scraping", "from mtp_api.exposition import parse"),
        ("mtp_trainer.rlvr", "from mtp_api.acceptance import figures_between"),
        ("mtpjob.local.local_run", "from mtp_rollout.runtime.server import VllmServer\nimport mtp_trainer"),
        ("mtp_rollout.observability.rules", "from mtp_rollout.metrics import metric_names as mn"),
        ("mtp_rollout.runtime.serve", "from . import vllm_compat"),
    ],
)
def test_the_checker_allows_the_forward_edges(module: str, source: str) -> None:
    assert violations(module, source) == []


# Kopf's private API (``kopf._...``) is imported nowhere: handlers use Kopf's public API, and the operator's
# API client (mtp_operator.kube) builds on the public kopf.ConnectionInfo its login handler returns.


def private_kopf_imports(module: str, source: str) -> list[str]:
    return [
        f"{module}:{line} imports {target}" for line, target in imported(source, module) if target.startswith("kopf._")
    ]


def test_no_private_kopf_api() -> None:
    found = [v for module, path in production_modules() for v in private_kopf_imports(module, path.read_text())]
    assert not found, "\n".join(found)
    # not vacuous: the operator does use Kopf (its public API)
    assert any(t == "kopf" for _, t in imported((PACKAGES["mtp_operator"] / "handlers.py").read_text(), "x"))


@pytest.mark.parametrize(
    "source",
    [
        "from kopf._cogs.structs.references import Selector",
        "import kopf._core.intents.registries",
        "def f():\n    from kopf._cogs.clients import api",
    ],
)
def test_the_checker_catches_a_private_kopf_import(source: str) -> None:
    assert private_kopf_imports("mtp_operator.kube", source)
    assert not private_kopf_imports("mtp_operator.kube", "import kopf\nfrom kopf import ConnectionInfo")
