"""`mtpjob import-roll FILE`: a ROLL pipeline YAML in, an MTPTrainingJob manifest out.

Exit status 0 when the converted manifest is valid, 2 when the file cannot be converted or the
result is not valid yet (bad input, as for every command); each message names the ROLL key or
the manifest field to fix.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import yaml

from mtp_api.contracts import EXIT_INVALID_SPEC
from mtp_api.roll_import import RollImportError, convert_file
from mtp_api.validation import validate_object


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", metavar="FILE", help="ROLL pipeline YAML (rlvr_config.yaml, sft_config.yaml, ...)")
    parser.add_argument("-o", "--output", help="write the manifest here instead of stdout")


def run(args: argparse.Namespace) -> int:
    try:
        result = convert_file(args.file)
    except RollImportError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_INVALID_SPEC
    text = yaml.safe_dump(result.manifest, sort_keys=False)
    if args.output:
        try:
            Path(args.output).write_text(text)
        except OSError as exc:
            print(f"error: --output {args.output}: cannot be written ({exc.strerror or exc})", file=sys.stderr)
            return EXIT_INVALID_SPEC
    else:
        sys.stdout.write(text)
    for note in result.notes:
        print(f"note: {note}", file=sys.stderr)
    for key in result.unmapped:
        print(f"not mapped: {key}", file=sys.stderr)
    report = validate_object(result.manifest, base_dir=Path(args.file).resolve().parent)
    for w in report.warnings:
        print(f"warning: {w}", file=sys.stderr)
    for e in report.errors:
        print(f"error: {e}", file=sys.stderr)
    if not report.ok:
        print("the converted manifest is not valid yet: fix the fields above", file=sys.stderr)
    return 0 if report.ok else EXIT_INVALID_SPEC
