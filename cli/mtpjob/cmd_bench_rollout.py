"""`mtpjob bench-rollout FILE --model DIR`: MTP speculative decoding against plain decoding.

Runs the prompt set on the job's own server settings with and without speculation, for each k,
and prints throughput ratio, acceptance figures and whether greedy outputs are identical.

``--calibrate`` instead measures the step costs that ``numSpeculativeTokens: auto`` needs
(``mtpjob.local.calibrate``): it writes ``DIR/mtp_calibration.json`` and the ConfigMap manifest
that ``spec.rollout.speculative.calibration`` names.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rich.console import Console

    from mtp_api.types import MTPTrainingJob


def int_list(text: str, *, what: str, low: int, high: int, example: str) -> list[int]:
    """A comma-separated list of integers in [low, high]; argparse turns the error into exit 2."""
    try:
        values = [int(x) for x in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected comma-separated integers such as {example}") from None
    if not values or not all(low <= v <= high for v in values):
        raise argparse.ArgumentTypeError(f"{text!r}: each {what} must be between {low} and {high}")
    return values


def draft_lengths(text: str) -> list[int]:
    """``--k 1,2,3``: draft lengths vLLM accepts (1-16)."""
    return int_list(text, what="draft length", low=1, high=16, example="1,2,3")


def batch_sizes(text: str) -> list[int]:
    """``--batch-sizes 1,2,4,8``: requests in flight at which to time a step."""
    return int_list(text, what="batch size", low=1, high=4096, example="1,2,4,8")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", metavar="FILE", help="MTPTrainingJob YAML (server settings come from spec.rollout)")
    parser.add_argument("--model", required=True, help="Hugging Face checkpoint directory with MTP weights")
    parser.add_argument(
        "--k",
        type=draft_lengths,
        default=None,
        help="comma-separated draft lengths (default: the job's numSpeculativeTokens)",
    )
    parser.add_argument("--prompts", type=int, default=16, help="number of prompts (pydoc questions)")
    parser.add_argument("--max-tokens", type=int, default=64, help="tokens generated per prompt")
    parser.add_argument("--concurrency", type=int, default=1, help="requests in flight")
    parser.add_argument("--output-dir", type=Path, default=None, help="logs and bench.json (default runs/<job>/bench)")
    cal = parser.add_argument_group("calibration (for numSpeculativeTokens: auto)")
    cal.add_argument("--calibrate", action="store_true", help="measure step costs instead of the speedup")
    cal.add_argument("--batch-sizes", type=batch_sizes, default=[1, 2, 4, 8], help="default 1,2,4,8")
    cal.add_argument("--max-k", type=int, default=None, help="largest k to time (default: the job's maximum)")
    cal.add_argument("--calibration-tokens", type=int, default=64, help="tokens per timed request")


def run(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.markup import escape

    from mtp_api.contracts import EXIT_INVALID_SPEC
    from mtp_api.validation import ManifestError, load_job
    from mtp_rollout.runtime.checkpoint_check import CheckpointError, check_mtp_checkpoint
    from mtp_rollout.runtime.server import ServerError
    from mtpjob.local.bench import result_table, run_bench
    from mtpjob.local.prompts import pydoc_prompts

    console = Console()
    try:
        job = load_job(args.file)
        check_mtp_checkpoint(args.model)
    except (ManifestError, CheckpointError) as exc:
        console.print(f"[red]error:[/red] {escape(str(exc))}")
        return EXIT_INVALID_SPEC
    spec_k = job.spec.rollout.speculative.max_k if job.spec.rollout else 1
    ks = args.k or [spec_k]
    out = args.output_dir or Path("runs") / job.metadata.name / "bench"
    if args.calibrate:
        return _calibrate(args, job, args.max_k or spec_k, out, console)
    try:
        result = run_bench(
            job,
            str(Path(args.model).resolve()),
            ks,
            pydoc_prompts(args.prompts),
            max_tokens=args.max_tokens,
            workdir=out,
            concurrency=args.concurrency,
            on_progress=lambda msg: console.log(msg),
        )
    except ServerError as exc:
        console.print(f"[red]error:[/red] {escape(str(exc))}")
        return 1
    (out / "bench.json").write_text(json.dumps(result.to_json(), indent=2) + "\n")
    console.print(result_table(result))
    console.print(f"written: {out / 'bench.json'}")
    return 0 if all(result.outputs_equal(r) for r in result.speculative) else 1


def _calibrate(args: argparse.Namespace, job: MTPTrainingJob, max_k: int, out: Path, console: Console) -> int:
    from rich.markup import escape
    from rich.table import Table

    from mtp_rollout.runtime.server import ServerError
    from mtpjob.local.calibrate import calibrate, write_calibration
    from mtpjob.local.prompts import pydoc_prompts

    if not 1 <= max_k <= 16 or args.calibration_tokens < 8:
        console.print("[red]error:[/red] --max-k must be 1-16 and --calibration-tokens at least 8")
        return 2
    model = Path(args.model).resolve()
    try:
        cal = calibrate(
            job,
            str(model),
            pydoc_prompts(max(args.batch_sizes) * 3),
            max_k=max_k,
            batch_sizes=args.batch_sizes,
            workdir=out,
            tokens=args.calibration_tokens,
            on_progress=lambda msg: console.log(msg),
        )
    except ServerError as exc:
        console.print(f"[red]error:[/red] {escape(str(exc))}")
        return 1
    beside, manifest = write_calibration(job, cal, model, out)
    table = Table(title=f"ms per engine step: {cal.hardware}, {cal.dtype}")
    table.add_column("engine")
    for b in cal.batch_sizes:
        table.add_column(f"batch {b}", justify="right")
    table.add_row("plain", *(f"{cal.plain_step_s[b] * 1000:.2f}" for b in cal.batch_sizes))
    for k, row in sorted(cal.spec_step_s.items()):
        table.add_row(f"mtp k={k}", *(f"{row[b] * 1000:.2f}" for b in cal.batch_sizes))
    console.print(table)
    console.print(f"written: {beside}\nConfigMap: kubectl apply -f {manifest}")
    return 0
