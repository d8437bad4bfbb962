"""`mtpjob validate FILE...`: the errors `kubectl apply` would give, and the ones CEL cannot.

Each file is checked on its own: one that cannot be read (missing, not UTF-8, not YAML, the wrong
shape) is reported and the rest are still checked. Exit status 0 when every file is valid, 2 when
any is not (bad input, as for every command), with each finding naming its file and field.
"""

from __future__ import annotations

import argparse

from mtp_api.contracts import EXIT_INVALID_SPEC
from mtp_api.validation import ManifestError, validate_file


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("files", nargs="+", metavar="FILE", help="MTPTrainingJob YAML manifests")
    parser.add_argument("--strict", action="store_true", help="treat warnings as errors")


def _check(path: str, strict: bool) -> bool:
    """Print the findings of one file; True when it passes."""
    try:
        reports = validate_file(path)
    except ManifestError as exc:
        print(f"error: {exc}")
        return False
    ok = True
    for i, report in enumerate(reports):
        where = path if len(reports) == 1 else f"{path}[{i}]"
        for e in report.errors:
            print(f"{where}: error: {e}")
        for w in report.warnings:
            print(f"{where}: warning: {w}")
        if report.ok:
            name = report.job.metadata.name if report.job else "?"
            print(f"{where}: ok ({name})")
        ok &= report.ok and not (strict and bool(report.warnings))
    return ok


def run(args: argparse.Namespace) -> int:
    results = [_check(path, args.strict) for path in args.files]
    return 0 if all(results) else EXIT_INVALID_SPEC
