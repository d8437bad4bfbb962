"""`mtpjob crd`: print the CRD generated from the typed API."""

from __future__ import annotations

import argparse
import sys

from mtp_api.crd import crd_yaml


def add_arguments(parser: argparse.ArgumentParser) -> None:
    del parser


def run(args: argparse.Namespace) -> int:
    del args
    sys.stdout.write(crd_yaml())
    return 0
