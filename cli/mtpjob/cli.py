"""`mtpjob`: the command line of the MTPTrainingJob project.

Each sub-command lives in its own module ``mtpjob.cmd_<name>`` exposing ``add_arguments(parser)``
and ``run(args) -> int``; this file only wires them, importing a module when its command runs, so
that `mtpjob validate` never pays for importing torch or vLLM.
"""

from __future__ import annotations

import argparse
import importlib
import sys

COMMANDS: dict[str, tuple[str, str]] = {
    "validate": ("cmd_validate", "check manifests as `kubectl apply` would, plus the checks CEL cannot express"),
    "crd": ("cmd_crd", "print the generated CustomResourceDefinition"),
    "bench-rollout": ("cmd_bench_rollout", "measure MTP speculative decoding against plain decoding on one model"),
    "run": ("cmd_run", "run an MTPTrainingJob on this machine: train, serve with MTP speculation, measure"),
    "render": ("cmd_render", "print the Kubernetes objects the operator creates for a job, as YAML"),
    "import-roll": ("cmd_import_roll", "convert a ROLL pipeline YAML into an MTPTrainingJob"),
    "score": ("cmd_score", "score a JSONL of {response, answer} records with a job's reward (spec.reward)"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mtpjob", description=__doc__.splitlines()[0] if __doc__ else None)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        importlib.import_module(f"mtpjob.{module}").add_arguments(p)
        p.set_defaults(_module=module)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    module = importlib.import_module(f"mtpjob.{args._module}")
    return int(module.run(args))


if __name__ == "__main__":
    raise SystemExit(main())
