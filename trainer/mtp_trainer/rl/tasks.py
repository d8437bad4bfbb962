"""Prompts with verifiable answers: a built-in generated arithmetic task, and JSONL/Parquet datasets.

The built-in task (``builtin:arithmetic``) is integer arithmetic with ``+``, ``-`` and ``*`` under the
usual precedence, e.g. prompt ``Compute 51 + 99 * 8.`` with the worked solution
``First, 99 * 8 = 792. Then 51 + 792 = 843. The answer is \\boxed{843}.``:

- deterministic: the problems are a pure function of ``(seed, n, difficulty, max_operand, split)``;
- splits never overlap: a problem's split is a hash of its expression alone, so no seed can put the
  same expression in both ``train`` and ``validation`` (about 10% of all expressions are validation);
- difficulty = the number of operations (1..5); operands are 1..``max_operand``, and the factor on the
  right of a ``*`` is 2..``max_factor`` so that numbers stay short;
- the text is short and regular on purpose: SFT warm-up on it makes the model's own output (and so
  its MTP head's drafts) predictable.

Cluster datasets are read by :func:`load_problems` (JSONL, JSON and Parquet, the formats of verl and
ROLL, with configurable and nested keys such as ``reward_model.ground_truth``). Nothing here imports
torch.
"""

from __future__ import annotations

import glob
import hashlib
import json
import random
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

BUILTIN_ARITHMETIC = "builtin:arithmetic"
SPLITS = ("train", "validation")
VALIDATION_PER_MILLE = 100  # share of all expressions that belong to the validation split
MAX_DIFFICULTY = 5

# Defaults of the name ``builtin:arithmetic`` (override with ``builtin:arithmetic?n=2000&difficulty=1-2``).
BUILTIN_DEFAULTS: dict[str, str] = {
    "n": "30000",
    "validation_n": "",  # empty: n // 10 (at least one per difficulty level)
    "difficulty": "1-3",
    "seed": "0",
    "max_operand": "99",
    "max_factor": "9",
}


@dataclass(frozen=True)
class Problem:
    """A prompt, its reference answer (what the reward compares with), and a worked solution
    (empty when a dataset has none)."""

    prompt: str
    answer: str
    solution: str = ""


class ProblemDataError(ValueError):
    """A prompt dataset that cannot be read: the message names the file, the record, the key and the fix."""


# ------------------------------------------------------------------------------ built-in task

_TOKEN = re.compile(r"\s*(\d+|[-+*])")


def _split_of(expression: str) -> str:
    digest = hashlib.sha256(f"arithmetic:{expression}".encode()).digest()
    return "validation" if int.from_bytes(digest[:4], "big") % 1000 < VALIDATION_PER_MILLE else "train"


def _tokens(expression: str) -> tuple[list[int], list[str]]:
    text = expression.strip()
    if text.startswith("Compute "):
        text = text[len("Compute ") :]
    text = text.rstrip(".").strip()
    parts: list[str] = []
    pos = 0
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if not m:
            raise ValueError(f"not an arithmetic expression of integers and + - *: {expression!r}")
        parts.append(m.group(1))
        pos = m.end()
    nums, ops = parts[0::2], parts[1::2]
    if not nums or len(nums) != len(ops) + 1 or not all(n.isdigit() for n in nums) or any(o.isdigit() for o in ops):
        raise ValueError(f"not an arithmetic expression of integers and + - *: {expression!r}")
    return [int(n) for n in nums], ops


def solution_for(expression: str) -> Problem:
    """The problem for ``expression`` (``"51 + 99 * 8"``, or a prompt ``"Compute 51 + 99 * 8."``): its
    prompt, answer, and the worked solution, one step per operation, ``*`` first (left to right), then
    ``+``/``-`` left to right, ending in ``The answer is \\boxed{N}.``"""
    nums, ops = _tokens(expression)
    canonical = " ".join([str(nums[0])] + [f"{o} {n}" for o, n in zip(ops, nums[1:], strict=True)])
    steps: list[str] = []
    for phase in (("*",), ("+", "-")):
        while any(o in phase for o in ops):
            i = next(k for k, o in enumerate(ops) if o in phase)
            x, op, y = nums[i], ops[i], nums[i + 1]
            z = x * y if op == "*" else x + y if op == "+" else x - y
            steps.append(f"{x} {op} {y} = {z}.")
            nums[i : i + 2] = [z]
            del ops[i]
    answer = str(nums[0])
    text = " ".join(("First, " if k == 0 else "Then ") + s for k, s in enumerate(steps))
    solution = f"{text} The answer is \\boxed{{{answer}}}." if text else f"The answer is \\boxed{{{answer}}}."
    return Problem(prompt=f"Compute {canonical}.", answer=answer, solution=solution)


def arithmetic_problems(
    seed: int, n: int, difficulty: int, split: str = "train", max_operand: int = 99, max_factor: int = 9
) -> list[Problem]:
    """``n`` distinct problems with ``difficulty`` operations (1..5) from ``split`` ("train" or
    "validation"), a pure function of the arguments. Raises ``ValueError`` when the split holds fewer
    than ``n`` distinct problems of that size (lower ``n`` or raise ``max_operand``)."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if not 1 <= difficulty <= MAX_DIFFICULTY:
        raise ValueError(f"difficulty is the number of operations, 1..{MAX_DIFFICULTY}; got {difficulty}")
    if max_operand < 2 or max_factor < 2:
        raise ValueError(f"max_operand and max_factor must be at least 2; got {max_operand}, {max_factor}")
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    rng = random.Random(f"arithmetic:{seed}:{difficulty}:{max_operand}:{max_factor}:{split}")
    seen: set[str] = set()
    out: list[Problem] = []
    attempts = 0
    while len(out) < n:
        attempts += 1
        if attempts > 50 * n + 1000:
            raise ValueError(
                f"only {len(out)} distinct {split} problems with difficulty {difficulty} and operands up to "
                f"{max_operand} were found, {n} were asked for; lower n or raise max_operand"
            )
        ops = [rng.choice("+-*") for _ in range(difficulty)]
        nums = [rng.randint(1, max_operand)]
        nums += [rng.randint(2, max_factor) if o == "*" else rng.randint(1, max_operand) for o in ops]
        expression = " ".join([str(nums[0])] + [f"{o} {x}" for o, x in zip(ops, nums[1:], strict=True)])
        if expression in seen or _split_of(expression) != split:
            continue
        seen.add(expression)
        out.append(solution_for(expression))
    return out


def is_builtin(name: str) -> bool:
    return name == BUILTIN_ARITHMETIC or name.startswith(BUILTIN_ARITHMETIC + "?")


def expand_builtin(name: str, difficulty: int, train_size: int, validation_size: int, seed: int) -> str:
    """``builtin:arithmetic`` with the job's ``spec.trainer.data.builtinTask`` settings spelled out
    (``difficulty`` operations in every problem); a name that already has options is kept as is."""
    if not is_builtin(name) or "?" in name:
        return name
    return f"{name}?n={train_size}&validation_n={validation_size}&difficulty={difficulty}&seed={seed}"


def builtin_problems(name: str, split: str = "train") -> list[Problem]:
    """The problems a ``builtin:arithmetic[?n=..&validation_n=..&difficulty=lo-hi&seed=..&max_operand=..&max_factor=..]``
    name stands for (defaults in ``BUILTIN_DEFAULTS``; a difficulty range mixes the levels in equal
    shares, ``n`` in all). The validation split has ``validation_n`` problems (default: a tenth of
    ``n``, at least 1 per level)."""
    if not is_builtin(name):
        raise ValueError(f"{name!r} is not {BUILTIN_ARITHMETIC!r}")
    query = name[len(BUILTIN_ARITHMETIC) + 1 :] if "?" in name else ""
    params = dict(BUILTIN_DEFAULTS)
    for key, value in parse_qsl(query, keep_blank_values=True, strict_parsing=bool(query)):
        if key not in BUILTIN_DEFAULTS:
            raise ValueError(f"{name!r}: unknown parameter {key!r}; known: {', '.join(BUILTIN_DEFAULTS)}")
        params[key] = value
    try:
        lo_s, _, hi_s = params["difficulty"].partition("-")
        lo, hi = int(lo_s), int(hi_s or lo_s)
        n, seed = int(params["n"]), int(params["seed"])
        validation_n = int(params["validation_n"]) if params["validation_n"] else max(hi - lo + 1, n // 10)
        max_operand, max_factor = int(params["max_operand"]), int(params["max_factor"])
    except ValueError as exc:
        raise ValueError(f"{name!r}: parameters must be integers (difficulty: N or LO-HI): {exc}") from exc
    if not 1 <= lo <= hi <= MAX_DIFFICULTY:
        raise ValueError(f"{name!r}: difficulty must be within 1..{MAX_DIFFICULTY}, as N or LO-HI")
    levels = list(range(lo, hi + 1))
    if split == "validation":
        n = validation_n
    out: list[Problem] = []
    for k, level in enumerate(levels):
        share = n // len(levels) + (1 if k < n % len(levels) else 0)
        out += arithmetic_problems(seed, share, level, split, max_operand, max_factor)
    return out


def as_conversation(problem: Problem) -> list[dict[str, str]]:
    """SFT form (format ``messages``): the prompt as the user turn, the worked solution as the answer."""
    return [{"role": "user", "content": problem.prompt}, {"role": "assistant", "content": problem.solution}]


# ------------------------------------------------------------------------------ datasets

_MISSING = object()


def _lookup(record: Any, key: str) -> Any:
    """``record[key]``, or the nested value of a dotted key (``reward_model.ground_truth``)."""
    if isinstance(record, dict) and key in record:
        return record[key]
    node = record
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return _MISSING
        node = node[part]
    return node


def _prompt_text(value: Any) -> str | None:
    """A prompt string, or the last user turn of a chat list (verl stores ``[{"role", "content"}]``)."""
    if isinstance(value, str):
        return value
    if isinstance(value, list) and value and all(isinstance(m, dict) and "content" in m for m in value):
        users = [m for m in value if m.get("role") == "user"] or value
        content = users[-1]["content"]
        return content if isinstance(content, str) else None
    return None


def _scalar_text(value: Any) -> str | None:
    if isinstance(value, str):
        return value
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    return None


def _records(path: Path) -> list[tuple[int, Any]]:
    """(record number, record) pairs: JSONL line numbers, JSON array positions or Parquet rows, from 1."""
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        try:
            import pyarrow.parquet as pq

            rows = pq.read_table(path).to_pylist()
        except ImportError as exc:
            raise ProblemDataError(f"{path}: reading Parquet needs pyarrow; pip install pyarrow") from exc
        except Exception as exc:  # pyarrow raises several types for a broken file
            raise ProblemDataError(f"{path}: not a readable Parquet file ({exc}); re-export it or use JSONL") from exc
        return list(enumerate(rows, start=1))
    if suffix not in (".jsonl", ".json"):
        raise ProblemDataError(
            f"{path}: unsupported file type {suffix or '(no extension)'!r}; use .jsonl (one JSON object per "
            "line), .json or .parquet"
        )
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        bad_line = path.read_bytes()[: exc.start].count(b"\n") + 1
        raise ProblemDataError(
            f"{path}: record {bad_line} (line {bad_line}) is not UTF-8 (byte {exc.start}); re-encode the file as UTF-8"
        ) from exc
    if suffix == ".json" and text.lstrip().startswith("["):
        try:
            items = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ProblemDataError(f"{path}: not valid JSON ({exc}); fix the file or write it as JSONL") from exc
        return list(enumerate(items, start=1))
    out: list[tuple[int, Any]] = []
    for line_no, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            out.append((line_no, json.loads(line)))
        except json.JSONDecodeError as exc:
            raise ProblemDataError(
                f"{path}: record {line_no} (line {line_no}) is not JSON ({exc}); write one JSON object per line"
            ) from exc
    return out


def _resolve(pattern: str, base_dir: Path) -> list[Path]:
    p = Path(pattern)
    full = p if p.is_absolute() else base_dir / p
    if glob.has_magic(str(full)):
        hits = sorted(Path(x) for x in glob.glob(str(full), recursive=True) if Path(x).is_file())
        if not hits:
            raise ProblemDataError(f"{pattern!r} matches no file (looked for {full}); fix the glob or mount the data")
        return hits
    if not full.is_file():
        raise ProblemDataError(
            f"{pattern!r}: no such file {full}; fix the path (relative paths start at {base_dir}), mount the data "
            f"volume, or use {BUILTIN_ARITHMETIC!r}"
        )
    return [full]


def load_problems(
    files: Sequence[str],
    base_dir: str | Path = ".",
    prompt_key: str = "prompt",
    answer_key: str = "ground_truth",
    response_key: str | None = None,
    split: str = "train",
) -> list[Problem]:
    """Problems from JSONL / JSON / Parquet files (paths or globs, relative ones under ``base_dir``).

    ``prompt_key`` holds a string or a chat list (its last user turn is used); ``answer_key`` a string
    or a number; ``response_key``, if given, a reference solution. Keys may be dotted paths into
    nested records (``reward_model.ground_truth``, verl's layout). The name ``builtin:arithmetic[?...]``
    stands for the built-in task's ``split``. Any problem raises :class:`ProblemDataError` naming the
    file, the record number and the key."""
    out: list[Problem] = []
    for name in files:
        if is_builtin(name):
            try:
                out += builtin_problems(name, split)
            except ValueError as exc:
                raise ProblemDataError(str(exc)) from exc
            continue
        for path in _resolve(name, Path(base_dir)):
            for rec_no, rec in _records(path):
                where = f"{path}: record {rec_no}"
                if not isinstance(rec, dict):
                    raise ProblemDataError(f"{where} is a {type(rec).__name__}, expected an object with keys")
                fields: dict[str, str] = {}
                wanted = [("prompt_key", prompt_key), ("answer_key", answer_key)]
                if response_key is not None:
                    wanted.append(("response_key", response_key))
                for param, key in wanted:
                    value = _lookup(rec, key)
                    if value is _MISSING or value is None:
                        raise ProblemDataError(
                            f"{where} has no {key!r} (its keys: {sorted(rec)}); set {param} to the field that "
                            "holds it (dotted for nested fields, e.g. 'reward_model.ground_truth')"
                        )
                    text = _prompt_text(value) if param == "prompt_key" else _scalar_text(value)
                    if text is None:
                        kind = (
                            "a string or a list of {role, content} turns"
                            if param == "prompt_key"
                            else "a string or a number"
                        )
                        raise ProblemDataError(
                            f"{where}: {key!r} is a {type(value).__name__}, expected {kind}; point {param} at another field"
                        )
                    fields[param] = text
                out.append(Problem(fields["prompt_key"], fields["answer_key"], fields.get("response_key", "")))
    return out
