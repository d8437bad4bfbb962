"""`mtpjob render FILE`: print the children the operator would create for a job, as YAML.

The same pure builders the operator uses, without a cluster: what you see is what it applies
(less the owner references, which need the job's uid). Exit status 2 on bad input.
"""

from __future__ import annotations

import argparse
import re
import sys

import yaml

from mtp_api import types as t
from mtp_api.contracts import EXIT_INVALID_SPEC
from mtp_api.validation import ManifestError, load_job


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", metavar="FILE", help="an MTPTrainingJob YAML manifest")
    parser.add_argument("-n", "--namespace", help="namespace to render into (default: the manifest's, if any)")


def run(args: argparse.Namespace) -> int:
    from mtp_operator.builders.common import BuildError
    from mtp_operator.children import desired_children

    if args.namespace is not None and not (len(args.namespace) <= 63 and re.fullmatch(t.DNS_LABEL, args.namespace)):
        print(
            f"error: --namespace {args.namespace!r}: a namespace is a lowercase RFC 1123 label "
            "(a-z, 0-9, '-', at most 63 characters, starting and ending alphanumeric)",
            file=sys.stderr,
        )
        return EXIT_INVALID_SPEC
    try:
        job = load_job(args.file)
        if args.namespace:
            job = job.model_copy(update={"metadata": job.metadata.model_copy(update={"namespace": args.namespace})})
        children = desired_children(job)
    except (ManifestError, BuildError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_INVALID_SPEC
    sys.stdout.write(yaml.safe_dump_all(children, sort_keys=False, width=120))
    return 0
