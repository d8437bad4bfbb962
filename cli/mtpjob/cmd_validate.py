"""`mtpjob validate FILE...`: the errors `kubectl apply` would give, and the ones CEL cannot."""

from __future__ import annotations

import argparse

from mtp_api.validation import ManifestError, validate_file


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("files", nargs="+", metavar="FILE", help="MTPTrainingJob YAML manifests")
    parser.add_argument("--strict", action="store_true", help="treat warnings as errors")


def run(args: argparse.Namespace) -> int:
    failed = False
    for path in args.files:
        try:
            reports = validate_file(path)
        except ManifestError as exc:
            print(f"error: {exc}")
            failed = True
            continue
        for i, report in enumerate(reports):
            where = path if len(reports) == 1 else f"{path}[{i}]"
            for e in report.errors:
                print(f"{where}: error: {e}")
            for w in report.warnings:
                print(f"{where}: warning: {w}")
            if report.ok:
                name = report.job.metadata.name if report.job else "?"
                print(f"{where}: ok ({name})")
            failed |= not report.ok or (args.strict and bool(report.warnings))
    return 1 if failed else 0
