"""`mtpjob run FILE`: run an MTPTrainingJob on this machine (train, serve with MTP speculation, measure).

The very manifest a user would `kubectl apply`. See ``mtpjob.local.local_run`` for the steps and
docs/rollout.md for the artifacts.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", metavar="FILE", type=Path, help="MTPTrainingJob YAML")
    parser.add_argument("--output-dir", type=Path, default=None, help="artifacts (default runs/<job-name>)")
    g = parser.add_mutually_exclusive_group()
    g.add_argument(
        "--resume", dest="resume", action="store_true", default=True, help="resume the trainer's checkpoints (default)"
    )
    g.add_argument("--fresh", dest="resume", action="store_false", help="delete the output folder and start over")
    parser.add_argument("--max-steps", type=int, default=None, help="override hyperparameters.maxSteps (smoke runs)")
    parser.add_argument("--prompts", type=int, default=32, help="prompts decoded by the rollout")
    parser.add_argument(
        "--speed-rounds",
        type=int,
        default=5,
        help="interleaved speculative/plain rounds; the speedup compares each side's fastest pass",
    )
    parser.add_argument(
        "--max-tokens", type=int, default=None, help="tokens per prompt (default rollout.generation.maxTokens)"
    )
    parser.add_argument(
        "--metrics-port", type=int, default=0, help="localhost port of the rollout metrics (0: any free port)"
    )
    parser.add_argument(
        "--no-plain", dest="compare_plain", action="store_false", help="skip the plain-decoding comparison"
    )


def run(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.markup import escape

    from mtp_api.contracts import EXIT_INVALID_SPEC
    from mtp_api.validation import ManifestError, load_job
    from mtp_rollout.runtime.checkpoint_check import CheckpointError
    from mtpjob.local.local_run import RunOptions, run_local

    console = Console()
    try:
        job = load_job(args.file)
    except ManifestError as exc:
        console.print(f"[red]error:[/red] {escape(str(exc))}")
        return EXIT_INVALID_SPEC
    for flag, value in (("--prompts", args.prompts), ("--speed-rounds", args.speed_rounds)):
        if value < 1:
            console.print(f"[red]error:[/red] {flag} must be at least 1, got {value}")
            return EXIT_INVALID_SPEC
    if job.spec.rollout is None or job.spec.rollout.gpus_per_replica != 0:
        console.print("[red]error:[/red] mtpjob run needs spec.rollout with gpusPerReplica: 0 (vLLM on CPU)")
        return EXIT_INVALID_SPEC
    opts = RunOptions(
        job_file=args.file,
        output_dir=args.output_dir or Path("runs") / job.metadata.name,
        resume=args.resume,
        max_steps=args.max_steps,
        prompts=args.prompts,
        speed_rounds=args.speed_rounds,
        max_tokens=args.max_tokens,
        metrics_port=args.metrics_port,
        compare_plain=args.compare_plain,
    )
    try:
        return run_local(job, opts, console)
    except CheckpointError as exc:
        console.print(f"[red]error:[/red] {escape(str(exc))}")
        return 1
