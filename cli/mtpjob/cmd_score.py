"""`mtpjob score RECORDS.jsonl --job JOB.yaml`: score responses with a job's reward before spending GPUs.

Reads JSONL records ``{"response": ..., "answer": ...}`` (``-`` reads stdin) and prints one JSON
object per record: ``line``, ``score``, ``correct``, ``parsed``, ``parse_failed``. The reward is the
job's ``spec.reward`` (the default math reward when the job has none, or without ``--job``). A bad
line (not JSON, a missing key) is reported on stderr with its number and skipped; the others are
still scored, and the exit status is then 2. A summary goes to stderr, so stdout stays JSONL.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, BinaryIO


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "records", metavar="RECORDS.jsonl", help='JSONL of {"response": ..., "answer": ...}; - for stdin'
    )
    parser.add_argument("--job", type=Path, default=None, help="MTPTrainingJob YAML whose spec.reward is used")
    parser.add_argument("--response-key", default="response", help="key of the model's response (default response)")
    parser.add_argument("--answer-key", default="answer", help="key of the reference answer (default answer)")


def _err(msg: str) -> None:
    print(f"error: {msg}", file=sys.stderr)


def _lines(fh: BinaryIO) -> Iterator[tuple[int, str | None]]:
    """(line number, text) pairs; text is None for a line that is not UTF-8."""
    for line_no, raw in enumerate(fh, start=1):
        try:
            yield line_no, raw.decode("utf-8")
        except UnicodeDecodeError:
            yield line_no, None


def _score_lines(
    lines: Iterable[tuple[int, str | None]], name: str, args: argparse.Namespace, reward: Any
) -> tuple[int, int, float, int, int]:
    scored = bad = correct = failed = 0
    total = 0.0
    for line_no, line in lines:
        if line is None:
            _err(f"{name}:{line_no}: not UTF-8; re-encode the file as UTF-8")
            bad += 1
            continue
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as exc:
            _err(f"{name}:{line_no}: not JSON ({exc.msg} at column {exc.colno}); write one JSON object per line")
            bad += 1
            continue
        if not isinstance(rec, dict):
            _err(f"{name}:{line_no}: a JSON {type(rec).__name__}, expected an object with {args.response_key!r}")
            bad += 1
            continue
        missing = [k for k in (args.response_key, args.answer_key) if rec.get(k) is None]
        if missing:
            _err(
                f"{name}:{line_no}: missing key {' and '.join(repr(k) for k in missing)} (found {sorted(rec)}); "
                "use --response-key/--answer-key for other names"
            )
            bad += 1
            continue
        response, answer = rec[args.response_key], rec[args.answer_key]
        if not isinstance(response, str) or not isinstance(answer, str | int | float) or isinstance(answer, bool):
            _err(f"{name}:{line_no}: {args.response_key!r} must be a string and {args.answer_key!r} a string or number")
            bad += 1
            continue
        result = reward.score(response, str(answer))
        print(json.dumps({"line": line_no, **result.to_dict()}), flush=False)
        scored += 1
        total += result.score
        correct += int(result.correct)
        failed += int(result.parse_failed)
    return scored, bad, total, correct, failed


def run(args: argparse.Namespace) -> int:
    from mtp_api.validation import ManifestError, load_job

    reward_spec = None
    if args.job is not None:
        try:
            reward_spec = load_job(args.job).spec.reward
        except ManifestError as exc:
            _err(str(exc))
            return 2
    try:
        from mtp_trainer.rl.reward import MathRewardFn
    except ImportError as exc:
        _err(f"the math reward needs math-verify ({exc}); pip install math-verify==0.9.0")
        return 2
    reward = MathRewardFn.from_reward_spec(reward_spec)

    name = args.records
    if name == "-":
        counts = _score_lines(_lines(sys.stdin.buffer), "<stdin>", args, reward)
    else:
        path = Path(name)
        if not path.is_file():
            _err(f"{path}: no such file; pass a JSONL of {{'response': ..., 'answer': ...}} records")
            return 2
        with path.open("rb") as fh:
            counts = _score_lines(_lines(fh), name, args, reward)
    sys.stdout.flush()
    scored, bad, total, correct, failed = counts
    mean = total / scored if scored else 0.0
    spec = reward.spec
    print(
        f"scored {scored} records ({spec.answer_format}): mean score {mean:.4f}, {correct} correct, "
        f"{failed} parse failures" + (f", {bad} bad lines skipped" if bad else ""),
        file=sys.stderr,
    )
    return 2 if bad else 0
