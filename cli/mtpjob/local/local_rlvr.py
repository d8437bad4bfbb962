"""`mtpjob run` of an rlvr job: the trainer drives GRPO against a local vLLM rollout, as on a cluster.

The run, top to bottom (artifacts under ``--output-dir``):

1. Start the trainer (``python -m mtp_trainer.main``) in its own process group with
   ``$MTP_ROLLOUT_URLS`` pointing at a port on localhost, exactly the contract the operator fills
   on a cluster. Its ``metrics.jsonl`` drives the screen: a progress bar through the SFT warm-up.
2. When the trainer has exported weight version 0 (the ``export`` event), start vLLM on that port
   with the job's MTP speculation and weight sync (``launcher.server_plan(weight_sync=True)``) on
   the export. The trainer waits for it, then runs its RL steps; each step's line shows reward,
   accuracy, acceptance, mean acceptance length and tokens/s as it lands.
3. When the trainer is done, stop its vLLM and measure the final weights: greedy decoding of the
   held-out prompts with MTP speculation against a plain-decoding twin, one request at a time
   (speedup, acceptance, greedy equality).
4. Print the final table, write ``summary.json``, ``rl_steps.jsonl`` and ``rlvr.png`` (reward,
   accuracy and acceptance over RL steps).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from mtp_api import contracts
from mtp_api import types as t
from mtp_rollout.runtime.launcher import server_plan
from mtp_rollout.runtime.server import VllmServer, free_port
from mtpjob.local.local_run import LocalRun, RunError, _tail, speed_rows
from mtpjob.local.prompts import CHATML

IM_END = "<|im_end|>"  # the chat turn's end: mtp_trainer.tokenizer.IM_END


def heldout_prompts(job: t.MTPTrainingJob, n: int) -> list[str]:
    """ChatML prompts of the job's held-out problems (the built-in task's validation split)."""
    from mtp_trainer.rl.tasks import builtin_problems, expand_builtin, is_builtin

    data = job.spec.trainer.data
    name = next((f for f in data.train_files if is_builtin(f)), None)
    if name is None:
        raise RunError("mtpjob run of an rlvr job measures on the built-in task; use trainFiles ['builtin:arithmetic']")
    task = data.builtin_task
    name = expand_builtin(name, task.difficulty, task.train_size, task.validation_size, task.seed)
    problems = builtin_problems(name, "validation")[:n]
    return [CHATML.format(question=p.prompt) for p in problems]


class LocalRLVR(LocalRun):
    """The rlvr flavour of :class:`LocalRun` (same process-group plumbing and metrics)."""

    def train_rlvr(self) -> Path:
        trainer_dir = self.out / "trainer"
        port = free_port()  # the rollout's, handed to the trainer before vLLM starts on it
        proc, log_path, metrics_path, offset = self.start_trainer(
            {contracts.ENV_ROLLOUT_URLS: f"http://127.0.0.1:{port}"}
        )
        self.rl_steps: list[dict[str, Any]] = []
        self.rl_validation: list[dict[str, Any]] = []
        server: VllmServer | None = None
        warm = self.job.spec.trainer.warmup
        columns = (
            TextColumn("[bold]warm-up[/bold]"),
            BarColumn(),
            TextColumn("{task.completed}/{task.total}"),
            TextColumn("{task.description}"),
            TimeElapsedColumn(),
        )
        progress = Progress(*columns, console=self.console, transient=False)
        bar = progress.add_task("starting", total=warm.steps if warm else 0)
        progress.start()
        try:
            while True:
                offset, events = self._read(metrics_path, offset)
                for rec in events:
                    if rec.get("phase") == "warmup" and "lm_loss" in rec and rec.get("split") != "validation":
                        agree = " ".join(f"{x:.0%}" for x in rec.get("mtp_agreement", []))
                        progress.update(
                            bar, completed=rec["step"], description=f"lm {rec['lm_loss']:.3f} agree [{agree}]"
                        )
                    elif rec.get("event") == "export" and server is None:
                        progress.stop()
                        server = self._start_rollout(Path(rec["path"]), port)
                    elif rec.get("phase") == "rl" and rec.get("split") == "validation":
                        self.rl_validation.append(rec)
                        self.console.print(
                            f"  held-out accuracy at step {rec['step']}: {rec['accuracy']:.1%} ({rec['prompts']} prompts)"
                        )
                    elif rec.get("phase") == "rl":
                        self.rl_steps.append(rec)
                        self.console.print(step_line(rec), soft_wrap=True)
                if proc.poll() is not None:
                    break
                time.sleep(0.5)
            offset, events = self._read(metrics_path, offset)
        finally:
            progress.stop()
            if server is not None:
                server.stop()
                self.children.servers.remove(server)
        del self.children.groups["trainer"]
        if proc.returncode != 0:
            raise RunError(f"trainer exited with code {proc.returncode}; see {log_path}:\n{_tail(log_path)}")
        hf = trainer_dir / contracts.EXPORT_SUBDIR
        if not (hf / "config.json").exists():
            raise RunError(f"trainer finished but wrote no export at {hf}; see {log_path}")
        return hf

    def _read(self, path: Path, offset: int) -> tuple[int, list[dict[str, Any]]]:
        if not path.exists():
            return offset, []
        with path.open() as fh:
            fh.seek(offset)
            chunk = fh.read()
        complete = chunk[: chunk.rfind("\n") + 1]
        out = []
        for line in complete.splitlines():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue
        return offset + len(complete.encode()), out

    def _start_rollout(self, model: Path, port: int) -> VllmServer:
        plan = server_plan(self.job, str(model.resolve()), host="127.0.0.1", port=port, weight_sync=True)
        server = VllmServer(plan, self.out / "vllm-rollout.log", port=port).start()
        self.children.servers.append(server)
        self._write_run_info()
        self.console.print(f"rollout: vLLM with MTP speculation and weight sync on {server.base_url}")
        self.console.print(STEP_HEADER, soft_wrap=True)
        return server

    def execute(self) -> dict[str, Any]:
        import shutil

        self.stop = [IM_END]  # answers end with their turn, as in RL; tokens/s counts real answer tokens
        if not self.opts.resume and self.out.exists():
            shutil.rmtree(self.out)
        self.out.mkdir(parents=True, exist_ok=True)
        self._serve_metrics()
        t0 = time.perf_counter()
        model = self.train_rlvr()
        train_s = time.perf_counter() - t0
        gen = (self.job.spec.rollout or t.RolloutSpec()).generation
        prompts = heldout_prompts(self.job, self.opts.prompts)
        max_tokens = self.opts.max_tokens or gen.max_tokens
        spec, fig, raw, speed = self.serve_and_measure(model, prompts, max_tokens)
        summary = self._summary(spec, fig, raw, speed)
        summary["pipeline"] = "rlvr"
        summary["train_seconds"] = train_s
        summary["rl_steps"] = self.rl_steps
        summary["rl_validation"] = self.rl_validation
        (self.out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        with (self.out / "rl_steps.jsonl").open("w") as fh:
            for rec in self.rl_steps + self.rl_validation:
                fh.write(json.dumps(rec) + "\n")
        plot = plot_rlvr(self.rl_steps, self.rl_validation, self.out / "rlvr.png")
        self.console.print(rlvr_table(summary))
        self.console.print(f"plot: {plot}" if plot else "plot: matplotlib missing, no PNG written")
        self.console.print(f"artifacts: {self.out}")
        return summary


STEP_HEADER = "  step  reward  accuracy  accept  mean len  gen tok/s  resp len  version  gen/train/sync s"


def step_line(rec: dict[str, Any]) -> str:
    """One RL step on one line (the columns of ``STEP_HEADER``)."""
    acc = rec.get("acceptance_rate")
    length = rec.get("mean_acceptance_length")
    ph = rec.get("phase_seconds", {})
    return (
        f"  {rec['step']:>4}  {rec['reward_mean']:>6.3f}  {rec['accuracy']:>8.1%}  "
        f"{'-' if acc is None else f'{acc:.1%}':>6}  {'-' if length is None else f'{length:.2f}':>8}  "
        f"{rec['generation_tokens_per_s']:>9.1f}  {rec['response_length_mean']:>8.1f}  {rec['weight_version']:>7}  "
        f"{ph.get('generate', 0):.1f}/{ph.get('train', 0):.1f}/{ph.get('sync', 0):.1f}"
    )


def rlvr_table(summary: dict[str, Any]) -> Table:
    steps = summary["rl_steps"]
    val = summary["rl_validation"]
    table = Table(title=f"mtpjob run {summary['job']}: RLVR with MTP k={summary['num_speculative_tokens']}")
    table.add_column("figure")
    table.add_column("value", justify="right")
    fmt = lambda v, p: "-" if v is None else p.format(v)  # noqa: E731
    if steps:
        first, last = steps[0], steps[-1]
        table.add_row("RL steps", str(last["step"]))
        table.add_row("reward (first -> last step)", f"{first['reward_mean']:.3f} -> {last['reward_mean']:.3f}")
        table.add_row("sample accuracy (first -> last)", f"{first['accuracy']:.1%} -> {last['accuracy']:.1%}")
        table.add_row(
            "rollout acceptance (first -> last)",
            f"{fmt(first.get('acceptance_rate'), '{:.1%}')} -> {fmt(last.get('acceptance_rate'), '{:.1%}')}",
        )
        phases = {
            k: sum(s["phase_seconds"].get(k, 0.0) for s in steps) for k in ("generate", "reward", "train", "sync")
        }
        total = sum(phases.values()) or 1.0
        table.add_row("RL step time split", " ".join(f"{k} {v / total:.0%}" for k, v in phases.items()))
    if val:
        table.add_row("held-out accuracy (first -> last)", f"{val[0]['accuracy']:.1%} -> {val[-1]['accuracy']:.1%}")
    acc = summary["acceptance"]
    table.add_row("final weights: acceptance rate", fmt(acc["acceptance_rate"], "{:.1%}"))
    table.add_row("final weights: mean acceptance length", fmt(acc["mean_acceptance_length"], "{:.3f}"))
    table.add_row("final weights: per-position acceptance", " ".join(f"{x:.1%}" for x in acc["per_position"]) or "-")
    speed_rows(table, summary)
    return table


def plot_rlvr(steps: list[dict[str, Any]], validation: list[dict[str, Any]], path: Path) -> Path | None:
    """Reward, accuracy and acceptance per RL step (PNG); None when matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    xs = [s["step"] for s in steps]
    ax1.plot(xs, [s["reward_mean"] for s in steps], marker="o", label="mean reward (samples)")
    ax1.plot(xs, [s["accuracy"] for s in steps], marker=".", label="sample accuracy")
    if validation:
        ax1.plot(
            [v["step"] for v in validation], [v["accuracy"] for v in validation], marker="s", label="held-out accuracy"
        )
    ax1.set_xlabel("RL step")
    ax1.set_title("reward")
    ax1.legend()
    acc = [(s["step"], s["acceptance_rate"]) for s in steps if s.get("acceptance_rate") is not None]
    ax2.plot([a for a, _ in acc], [b for _, b in acc], marker="o", color="tab:green", label="acceptance rate")
    ax2.set_ylim(0, 1)
    ax2.set_xlabel("RL step")
    ax2.set_title("MTP draft acceptance in the rollout")
    ax2.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
