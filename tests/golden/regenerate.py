"""Rewrite the golden files: ``python -m tests.golden.regenerate`` (from the repository root).

``tests/golden/render/<example>.yaml`` is what ``mtpjob render examples/<example>.yaml`` prints,
under a one-line header, re-dumped with multi-line strings (the ConfigMap's ``job.yaml``) as
literal blocks so that a diff shows the one line that changed. ``tests/operator/test_render_cli.py`` compares the CLI's output with these
files. After a deliberate change to an example or to what the operator builds, run this command
and review ``git diff tests/golden/`` like any other change: the diff is the change to the objects
the operator applies.
"""

from __future__ import annotations

import contextlib
import io
import sys
from pathlib import Path
from typing import Any

import yaml

from mtpjob.cli import main as mtpjob

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples"
GOLDEN = Path(__file__).resolve().parent / "render"
COMMAND = "python -m tests.golden.regenerate"


def examples() -> list[Path]:
    return sorted(EXAMPLES.glob("*.yaml"))


def golden_path(example: Path) -> Path:
    return GOLDEN / example.name


def header(example: Path) -> str:
    return f"# mtpjob render examples/{example.name}  (regenerate: {COMMAND})\n"


class _Dumper(yaml.SafeDumper):
    pass


def _str(dumper: yaml.SafeDumper, value: str) -> Any:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str)


def normalize(text: str) -> str:
    """The same objects, dumped the same way every time, multi-line strings as literal blocks."""
    docs = list(yaml.safe_load_all(text))
    return yaml.dump_all(docs, Dumper=_Dumper, sort_keys=False, width=120, explicit_start=True)


def render(example: Path) -> str:
    """What ``mtpjob render <example>`` prints, normalized, with the header; raises if it fails.

    An example that this release refuses up front (exit 2: a layout the trainer cannot run yet) has
    the refusal as its golden file, as YAML comments, so a change of what is refused is a reviewed
    diff too."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = mtpjob(["render", str(example)])
    if code == 2 and not out.getvalue().strip():
        text = err.getvalue().replace(f"{REPO}/", "")  # the same golden file in any checkout
        lines = [line.rstrip() for line in text.strip().splitlines()]
        return header(example) + "# refused (exit 2):\n" + "".join(f"# {line}\n" for line in lines)
    if code != 0:
        raise RuntimeError(f"mtpjob render {example} exited {code}: {err.getvalue()}")
    return header(example) + normalize(out.getvalue())


def main() -> int:
    GOLDEN.mkdir(parents=True, exist_ok=True)
    failed = 0
    for stale in sorted(set(GOLDEN.glob("*.yaml")) - {golden_path(e) for e in examples()}):
        stale.unlink()
        print(f"removed   {stale.relative_to(REPO)} (no such example)")
    for example in examples():
        path = golden_path(example)
        try:
            text = render(example)
        except RuntimeError as exc:  # an example that does not render is a bug to fix, not a golden file
            print(f"FAILED    {exc}", file=sys.stderr)
            failed += 1
            continue
        changed = not path.exists() or path.read_text() != text
        path.write_text(text)
        print(f"{'wrote    ' if changed else 'unchanged'} {path.relative_to(REPO)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
