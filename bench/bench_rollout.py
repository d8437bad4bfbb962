"""Benchmark MTP speculative decoding on CPU: acceptance, mean acceptance length and speedup at k = 1, 2, 3.

Two models (docs/bench-rollout.md has the figures and the reasoning):

- ``trained``: the tiny SFT example's export (``mtpjob run examples/tiny-sft.yaml`` writes it to
  ``runs/tiny-sft/trainer/hf``; pass ``--trained-model DIR``);
- ``control``: a ~65M-parameter Qwen3-Next made in code with the "bigram" head of
  ``mtp_rollout.testing.tiny_model`` (acceptance set by ``--draft-noise``), big enough that
  decoding cost is dominated by the model rather than per-step overhead, which is where a
  speedup can show on CPU.

Each model: one plain-decoding server, then one MTP server per k, all from the job's own
``server_plan``; one request at a time, greedy, ``ignore_eos``. Writes ``OUT/<model>/bench.json``.

    python bench/bench_rollout.py --trained-model runs/tiny-sft/trainer/hf --out runs/bench-rollout
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from rich.console import Console

from mtp_api.validation import load_job
from mtp_rollout.testing.tiny_model import make_tiny_qwen3_next
from mtpjob.local.bench import result_table, run_bench
from mtpjob.local.prompts import pydoc_prompts

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--job", type=Path, default=ROOT / "examples" / "tiny-sft.yaml")
    p.add_argument("--trained-model", type=Path, default=None, help="HF export of the trained tiny model")
    p.add_argument("--control", action=argparse.BooleanOptionalAction, default=True, help="also bench the ~65M control")
    p.add_argument("--draft-noise", type=float, default=0.3)
    p.add_argument("--k", default="1,2,3")
    p.add_argument("--prompts", type=int, default=8)
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--out", type=Path, default=ROOT / "runs" / "bench-rollout")
    args = p.parse_args()
    console = Console(width=150)
    job = load_job(args.job)
    ks = [int(x) for x in args.k.split(",")]
    models: dict[str, Path] = {}
    if args.trained_model is not None:
        models["trained-tiny"] = args.trained_model
    if args.control:
        control = args.out / "control-model"
        if not (control / "config.json").exists():
            make_tiny_qwen3_next(
                control, head="bigram", draft_noise=args.draft_noise, hidden_size=768, num_layers=8,
                num_heads=12, num_kv_heads=4, intermediate_size=2048, vocab_size=512,
            )  # fmt: skip
        models["control-65m"] = control
    report = {}
    for name, path in models.items():
        result = run_bench(
            job, str(path.resolve()), ks, pydoc_prompts(args.prompts), max_tokens=args.max_tokens,
            workdir=args.out / name, on_progress=lambda m, n=name: console.log(f"{n}: {m}"),
        )  # fmt: skip
        (args.out / name / "bench.json").write_text(json.dumps(result.to_json(), indent=2) + "\n")
        report[name] = result.to_json()
        console.print(result_table(result))
    (args.out / "bench.json").write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
