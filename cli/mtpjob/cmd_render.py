"""`mtpjob render FILE`: print the children the operator would create for a job, as YAML.

The same pure builders the operator uses, without a cluster: what you see is what it applies
(less the owner references, which need the job's uid).
"""

from __future__ import annotations

import argparse
import sys

import yaml

from mtp_api.validation import ManifestError, load_job


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", metavar="FILE", help="an MTPTrainingJob YAML manifest")
    parser.add_argument("-n", "--namespace", help="namespace to render into (default: the manifest's, if any)")


def run(args: argparse.Namespace) -> int:
    from mtp_operator.builders.common import BuildError
    from mtp_operator.children import desired_children

    try:
        job = load_job(args.file)
        if args.namespace:
            job = job.model_copy(update={"metadata": job.metadata.model_copy(update={"namespace": args.namespace})})
        children = desired_children(job)
    except (ManifestError, BuildError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    sys.stdout.write(yaml.safe_dump_all(children, sort_keys=False, width=120))
    return 0
