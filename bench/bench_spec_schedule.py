"""Fixed k against ``numSpeculativeTokens: auto``, at concurrency 1, 4 and 8, for a good and a collapsed head.

What it measures (docs/bench-rollout.md has the figures):

1. The calibration (``mtpjob.local.calibrate``): seconds per engine step of the plain engine and
   of the MTP engine at k = 0..max, at batch sizes 1, 2, 4, 8. Read from ``MODEL/mtp_calibration.json``
   when it is there, else measured and written there.
2. Two heads on the same trunk: ``good`` (the export as trained) and ``collapsed`` (the same export
   with the MTP fusion matrix replaced by noise: ``collapse_mtp_head``; acceptance near 0).
3. For each head and concurrency c: servers for plain decoding and fixed k = 1..max stay up; one
   probe pass at the largest k gives the per-position acceptance that the controller would see;
   ``choose_schedule`` (weight 1 at batch size c, as the operator weights the observed batch size)
   picks the auto schedule, and a server with exactly that configuration joins. Then ``--rounds``
   interleaved rounds (every server once per round, the order rotating) over the held-out prompts,
   answers ending at the turn's end; each configuration's figure is its fastest pass (other
   processes only slow a pass down; ``mtpjob.local.bench.PairedSpeed`` uses the same rule).
4. The cost model's prediction for every measured configuration (calibrated step time at batch c
   and the acceptance measured in that configuration's own passes) against the measurement.

    python bench/bench_spec_schedule.py --model runs/tiny-rlvr/trainer/hf --out runs/bench-schedule
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path
from typing import Any

from rich.console import Console

from mtp_api import types as t
from mtp_api.validation import load_job
from mtp_rollout.runtime.launcher import server_plan
from mtp_rollout.runtime.server import VllmServer, free_port
from mtp_rollout.speculation.cost_model import Calibration, CalibrationError, predicted_tokens_per_s
from mtp_rollout.speculation.schedule import Schedule, choose_schedule, to_vllm
from mtp_rollout.testing.tiny_model import collapse_mtp_head
from mtpjob.local.bench import DecodeRun, decode_pass, with_k
from mtpjob.local.calibrate import CALIBRATION_FILE, auto_job, calibrate
from mtpjob.local.local_rlvr import IM_END, heldout_prompts
from mtpjob.local.prompts import pydoc_prompts

ROOT = Path(__file__).resolve().parents[1]
MAX_BATCH = 256


def _start(
    plan_job: t.MTPTrainingJob, model: Path, log: Path, *, speculative: bool, schedule: Schedule | None = None
) -> VllmServer:
    port = free_port()
    plan = server_plan(plan_job, str(model), host="127.0.0.1", port=port, speculative=speculative, schedule=schedule)
    return VllmServer(plan, log, port=port).start()


def load_or_calibrate(job: t.MTPTrainingJob, model: Path, max_k: int, out: Path, console: Console) -> Calibration:
    path = model / CALIBRATION_FILE
    try:
        cal = Calibration.load(path)
        if cal.max_k >= max_k:
            console.log(f"calibration: {path}")
            return cal
    except CalibrationError:
        pass
    console.log(f"calibrating {model} (no usable {CALIBRATION_FILE})")
    cal = calibrate(
        job, str(model), pydoc_prompts(24), max_k=max_k, batch_sizes=[1, 2, 4, 8], workdir=out / "calibrate",
        on_progress=console.log,
    )  # fmt: skip
    cal.save(path)
    return cal


def k_at(config: str, schedule: Schedule | None, c: int) -> int | None:
    """The k a configuration runs at batch size c (None: the plain engine)."""
    if config == "plain":
        return None
    if config == "auto":
        assert schedule is not None
        return schedule.k_at(c)
    return int(config.removeprefix("k="))


def bench_head(
    head: str, model: Path, job: t.MTPTrainingJob, cal: Calibration, args: argparse.Namespace, console: Console
) -> list[dict[str, Any]]:
    name = job.metadata.name
    prompts = heldout_prompts(job, args.prompts)
    stop = [IM_END]
    logs = args.out / head
    logs.mkdir(parents=True, exist_ok=True)
    fixed: dict[str, VllmServer] = {"plain": _start(job, model, logs / "vllm-plain.log", speculative=False)}
    for k in range(1, args.max_k + 1):
        fixed[f"k={k}"] = _start(with_k(job, k), model, logs / f"vllm-k{k}.log", speculative=True)
    rows: list[dict[str, Any]] = []
    try:
        for server in fixed.values():
            server.wait_ready()
        for c in args.concurrency:
            probe = decode_pass(fixed[f"k={args.max_k}"], name, prompts, args.max_tokens, label="probe", k=args.max_k,
                                concurrency=c, stop=stop)  # fmt: skip
            schedule = choose_schedule(cal, probe.per_position, max_k=args.max_k, max_batch=MAX_BATCH,
                                       batch_weights={c: 1.0})  # fmt: skip
            console.log(f"{head}, concurrency {c}: acceptance {probe.per_position} -> auto: {schedule.describe()}")
            auto = _start(auto_job(job, args.max_k), model, logs / f"vllm-auto-c{c}.log", speculative=True,
                          schedule=schedule)  # fmt: skip
            try:
                auto.wait_ready()
                servers = {**fixed, "auto": auto}
                runs: dict[str, list[DecodeRun]] = {label: [] for label in servers}
                labels = list(servers)
                for r in range(args.rounds):
                    for label in labels[r % len(labels) :] + labels[: r % len(labels)]:
                        runs[label].append(decode_pass(servers[label], name, prompts, args.max_tokens, label=label,
                                                       k=0, concurrency=c, stop=stop))  # fmt: skip
            finally:
                auto.stop()
            plain_tps = max(x.tokens_per_second for x in runs["plain"])
            for label, passes in runs.items():
                tps = max(x.tokens_per_second for x in passes)
                k = k_at(label, schedule, c)
                per_position = passes[0].per_position
                predicted = predicted_tokens_per_s(cal, per_position, k, c)
                rows.append({
                    "head": head, "concurrency": c, "config": label, "k_at_c": k,
                    "schedule": schedule.describe() if label == "auto" else None,
                    "vllm_speculative_config": to_vllm(schedule) if label == "auto" else None,
                    "tokens_per_s": tps, "ratio_vs_plain": tps / plain_tps,
                    "tokens_per_s_rounds": [x.tokens_per_second for x in passes],
                    "acceptance_rate": passes[0].acceptance_rate, "per_position": per_position,
                    "predicted_tokens_per_s": predicted, "prediction_error": predicted / tps - 1,
                    "outputs_equal_plain": passes[0].outputs == runs["plain"][0].outputs,
                })  # fmt: skip
                console.log(f"{head} c={c} {label:6s} {tps:7.1f} tok/s  {tps / plain_tps:.2f}x plain  "
                            f"predicted {predicted:7.1f} ({predicted / tps - 1:+.0%})")  # fmt: skip
    finally:
        for server in fixed.values():
            server.stop()
    return rows


def markdown(rows: list[dict[str, Any]], max_k: int) -> str:
    """The benchmark table of docs/bench-rollout.md: tokens/s ratios against plain, per head and concurrency."""
    fixed = [f"k={k}" for k in range(1, max_k + 1)]
    head = "| head | concurrency | plain tok/s | " + " | ".join(fixed) + " | auto | auto schedule | auto / best fixed |"
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    keys = sorted({(r["head"], r["concurrency"]) for r in rows}, key=lambda x: (x[0] != "good", x[1]))
    for h, c in keys:
        by = {r["config"]: r for r in rows if r["head"] == h and r["concurrency"] == c}
        best = max(by[f]["tokens_per_s"] for f in fixed)
        cells = [f"{by[f]['ratio_vs_plain']:.2f}x" for f in fixed]
        lines.append(
            f"| {h} | {c} | {by['plain']['tokens_per_s']:.1f} | " + " | ".join(cells)
            + f" | **{by['auto']['ratio_vs_plain']:.2f}x** | {by['auto']['schedule']} | {by['auto']['tokens_per_s'] / best:.0%} |"
        )  # fmt: skip
    errors = [abs(r["prediction_error"]) for r in rows]
    lines.append("")
    lines.append(f"cost-model prediction error over {len(errors)} configurations: mean |error| "
                 f"{statistics.mean(errors):.0%}, max {max(errors):.0%}")  # fmt: skip
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--job", type=Path, default=ROOT / "examples" / "tiny-rlvr.yaml")
    p.add_argument("--model", type=Path, required=True, help="HF export with MTP weights (mtpjob run writes one)")
    p.add_argument("--out", type=Path, default=Path("runs/bench-schedule"))
    p.add_argument("--max-k", type=int, default=3)
    p.add_argument("--concurrency", type=lambda s: [int(x) for x in s.split(",")], default=[1, 4, 8])
    p.add_argument("--prompts", type=int, default=32)
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args()
    console = Console()
    job = load_job(args.job)
    model = args.model.resolve()
    args.out.mkdir(parents=True, exist_ok=True)
    cal = load_or_calibrate(job, model, args.max_k, args.out, console)
    collapsed = collapse_mtp_head(model, args.out / "collapsed-hf")
    rows = bench_head("good", model, job, cal, args, console)
    rows += bench_head("collapsed", collapsed, job, cal, args, console)
    (args.out / "bench-schedule.json").write_text(json.dumps({"calibration": cal.to_json(), "rows": rows}, indent=2))
    table = markdown(rows, args.max_k)
    (args.out / "bench-schedule.md").write_text(table + "\n")
    console.print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
