"""What README.md and docs/*.md name exists: repository paths, CLI sub-commands and ``python -m`` modules.

Read from inline code spans and fenced code blocks:

- a **path** is a token that starts at a top-level entry of the repository (``api/``, ``docs/``,
  ``bin/``, ``pyproject.toml`` ...) or at one of our packages (``mtp_rollout/...`` means
  ``rollout/mtp_rollout/...``); globs must match at least one file; tokens with placeholders
  (``<job>``, ``{a,b}``, ``$VAR``, ``...``) are not paths;
- a bare ``name.py`` must be the name of some file of the repository;
- ``mtpjob CMD`` and ``bin/mtpjob CMD`` must name a sub-command the CLI parser registers, and every
  ``--flag`` after it must be one of that sub-command's options;
- ``python bench/NAME.py --flag`` and ``python -m MODULE --flag`` (ours, with an argparse parser): the
  script or module must define the flag;
- ``python -m MODULE`` must be found by ``importlib.util.find_spec``; for modules that are not ours
  only the top-level package is looked up, so no third-party package is imported;
- a dotted name of ours (``mtp_rollout.runtime.launcher.server_plan``) must lead to a module file and,
  after it, to a name that module defines at top level (read with ``ast``, nothing is imported).
Run artefacts (``runs/...``, ``OUT/metrics.jsonl``) and Kubernetes names (``mtp.io/job-name``) are
neither, so they are not checked.
"""

from __future__ import annotations

import argparse
import ast
import importlib.util
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
ROOTS = {
    "api",
    "operator",
    "trainer",
    "rollout",
    "cli",
    "bench",
    "bin",
    "charts",
    "crds",
    "docs",
    "examples",
    "images",
    "requirements",
    "tests",
    ".ci",
}
ROOT_FILES = {"pyproject.toml", "README.md"}
PACKAGE_DIRS = {
    "mtp_api": "api",
    "mtp_operator": "operator",
    "mtp_trainer": "trainer",
    "mtp_rollout": "rollout",
    "mtpjob": "cli",
}
OURS = set(PACKAGE_DIRS)

CODE_SPAN = re.compile(r"`([^`\n]+)`")
FENCE = re.compile(r"^```[^\n]*\n(.*?)^```", re.S | re.M)
PLACEHOLDER = re.compile(r"[<>{}$]|\.\.\.")
COMMAND = re.compile(r"(?:^|[\s(`])(?:bin/)?mtpjob\s+([a-z][\w-]*)")
MODULE = re.compile(r"python3?\s+-m\s+([A-Za-z_][\w.]*)")
FLAG = re.compile(r"(?<![\w-])--[a-z][\w-]*")
SCRIPT = re.compile(r"python3?\s+((?:bench|bin)/[\w.-]+\.py)")
DOTTED = re.compile(r"\b(?:mtp_api|mtp_operator|mtp_trainer|mtp_rollout|mtpjob)(?:\.[A-Za-z_]\w*)+")


def code_texts(text: str) -> list[tuple[int, str]]:
    """(line, text) of every inline code span and every line of a fenced block."""
    out = []
    for m in FENCE.finditer(text):
        first = text.count("\n", 0, m.start(1)) + 1
        out += [(first + i, line) for i, line in enumerate(m.group(1).splitlines())]
    unfenced = FENCE.sub(lambda m: "\n" * m.group(0).count("\n"), text)
    out += [(unfenced.count("\n", 0, m.start()) + 1, m.group(1)) for m in CODE_SPAN.finditer(unfenced)]
    return out


def path_candidates(code: str) -> list[str]:
    out = []
    for word in re.split(r"[\s=,;()\[\]'\"]+", code):
        word = word.rstrip(".:")
        if not word or PLACEHOLDER.search(word) or "://" in word:
            continue
        head = word.split("/")[0]
        if (
            word in ROOT_FILES
            or ("/" in word and (head in ROOTS or head in PACKAGE_DIRS))
            or re.fullmatch(r"[\w.-]+\.py", word)
        ):
            out.append(word)
    return out


def resolve(word: str) -> list[Path]:
    """The files or directories a path token names (several for a glob)."""
    head = word.split("/")[0]
    if "/" not in word and word not in ROOT_FILES:  # a bare name.py
        return [p for p in REPO.rglob(word) if ".venv" not in p.parts and ".git" not in p.parts]
    base = REPO / PACKAGE_DIRS[head] if head in PACKAGE_DIRS else REPO
    rel = word.rstrip("/")
    if any(c in rel for c in "*?["):
        return list(base.glob(rel))
    p = base / rel
    return [p] if p.exists() else []


def cli_commands() -> dict[str, set[str]]:
    """Each sub-command of the CLI parser and its option strings."""
    from mtpjob import cli

    parser = cli.build_parser()
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return {name: set(sub._option_string_actions) for a in subs for name, sub in a.choices.items()}


def command_tail(code: str, start: int) -> str:
    """The command from ``start`` up to a comment, the end of the span, or the next command."""
    return re.split(r"\s#|;|&&|\|\s|\s-m\s", code[start:])[0]


def flag_problems(code: str, commands_known: dict[str, set[str]]) -> list[str]:
    out = []
    for m in COMMAND.finditer(code):
        options = commands_known.get(m.group(1))
        if options is not None:
            out += [
                f"mtpjob {m.group(1)} has no {f}" for f in FLAG.findall(command_tail(code, m.end())) if f not in options
            ]
    sources = [(m, REPO / m.group(1)) for m in SCRIPT.finditer(code)]
    sources += [(m, module_file(m.group(1))) for m in MODULE.finditer(code)]
    for m, path in sources:
        if path is None or not path.is_file() or "add_argument" not in (text := path.read_text()):
            continue  # not ours, or no parser of its own (mtp_trainer.launch passes torchrun's flags on)
        out += [f"{m.group(1)} has no {f}" for f in FLAG.findall(command_tail(code, m.end())) if f'"{f}"' not in text]
    return out


def module_file(module: str) -> Path | None:
    parts = module.split(".")
    if parts[0] not in PACKAGE_DIRS:
        return None
    base = REPO / PACKAGE_DIRS[parts[0]] / Path(*parts)
    return base / "__main__.py" if base.is_dir() else base.with_suffix(".py")


def module_exists(module: str) -> bool:
    top = module.split(".")[0]
    if top not in OURS:
        return importlib.util.find_spec(top) is not None
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        return False


def defines(source: Path, name: str) -> bool:
    """Whether a module defines ``name`` at top level (def, class, assignment or import)."""
    for node in ast.parse(source.read_text()).body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef) and node.name == name:
            return True
        if isinstance(node, ast.Assign | ast.AnnAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            if any(isinstance(t, ast.Name) and t.id == name for t in targets):
                return True
        if isinstance(node, ast.Import | ast.ImportFrom):
            if any((a.asname or a.name.split(".")[0]) == name for a in node.names):
                return True
    return False


def dotted_exists(dotted: str) -> bool:
    """Packages and modules by their files, then one top-level name of the last module."""
    parts = dotted.split(".")
    path = REPO / PACKAGE_DIRS[parts[0]] / parts[0]
    for i, part in enumerate(parts[1:], start=1):
        if path.is_dir() and (path / part / "__init__.py").is_file():
            path = path / part
        elif path.is_dir() and (path / f"{part}.py").is_file():
            path = path / f"{part}.py"
        else:
            return defines(path / "__init__.py" if path.is_dir() else path, part)
        if path.suffix == ".py":
            return i + 1 == len(parts) or defines(path, parts[i + 1])
    return True


def named(text: str) -> tuple[list[str], list[str], list[str]]:
    """The paths, sub-commands and modules a document names."""
    paths, commands, modules = [], [], []
    for _, code in code_texts(text):
        paths += path_candidates(code)
        commands += COMMAND.findall(code)
        modules += MODULE.findall(code)
    return paths, commands, modules


def problems(name: str, text: str, commands_known: dict[str, set[str]]) -> list[str]:
    out = []
    for line, code in code_texts(text):
        out += [f"{name}:{line}: no such path {w!r}" for w in path_candidates(code) if not resolve(w)]
        out += [f"{name}:{line}: no sub-command mtpjob {c}" for c in COMMAND.findall(code) if c not in commands_known]
        out += [f"{name}:{line}: no module {m}" for m in MODULE.findall(code) if not module_exists(m)]
        out += [f"{name}:{line}: no such name {d}" for d in DOTTED.findall(code) if not dotted_exists(d)]
        out += [f"{name}:{line}: {p}" for p in flag_problems(code, commands_known)]
    return out


@pytest.fixture(scope="module")
def commands_known() -> dict[str, set[str]]:
    return cli_commands()


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(REPO)))
def test_what_the_docs_name_exists(doc: Path, commands_known: dict[str, set[str]]) -> None:
    found = problems(str(doc.relative_to(REPO)), doc.read_text(), commands_known)
    assert not found, "\n".join(found)


def test_the_docs_are_read() -> None:
    """Not vacuous: the README's own paths, commands and modules are recognised."""
    paths, commands, modules = named((REPO / "README.md").read_text())
    assert {"bin/test", "charts/mtp-operator", "api/mtp_api/"} <= set(paths)
    assert {"run", "validate", "render", "score"} <= set(commands)
    assert "mtp_api.crd" in modules
    every_doc = [named(d.read_text()) for d in DOCS]
    assert sum(len(p) for p, _, _ in every_doc) > 100


def test_a_wrong_name_is_found(commands_known: dict[str, set[str]]) -> None:
    text = (
        "See `docs/install-guide.md`, `mtp_rollout/nowhere.py`, `no_such_file.py` and `examples/*.json`.\n"
        "```\nbin/mtpjob launch job.yaml\npython -m mtp_rollout.nowhere\n"
        "mtpjob run job.yaml --no-such-flag   # a --comment-flag is not checked\n"
        "python bench/bench_operator.py --jobs 1 --workers 2\npython -m mtp_trainer.main --job J --speed 3\n```\n"
        "Moved: `mtp_rollout.rates.increments`, `mtp_api.contracts.NO_SUCH_NAME`.\n"
        "Fine: `docs/api.md`, `mtp_rollout/runtime/serve.py`, `mtpjob run`, `python -m mtp_api.crd`, `<job>/x.py`,\n"
        "`mtp_api.contracts.EXIT_INVALID_SPEC`, `mtp_api.types.RolloutSpec.port`, `mtp_rollout.interface.server_plan`.\n"
    )
    found = problems("doc.md", text, commands_known)
    assert len(found) == 12, found
    for name in (
        "install-guide.md",
        "nowhere.py",
        "no_such_file.py",
        "*.json",
        "mtpjob launch",
        "no module mtp_rollout.nowhere",
        "no such name mtp_rollout.nowhere",
        "mtp_rollout.rates.increments",
        "NO_SUCH_NAME",
        "mtpjob run has no --no-such-flag",
        "bench/bench_operator.py has no --workers",
        "mtp_trainer.main has no --speed",
    ):
        assert any(name in f for f in found), (name, found)
