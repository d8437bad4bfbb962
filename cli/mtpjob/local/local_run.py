"""`mtpjob run FILE`: the MTPTrainingJob a user would `kubectl apply`, run on this machine.

The run, top to bottom (artifacts under ``--output-dir``, default ``runs/<job-name>``):

1. Serve Prometheus metrics on localhost: the rollout acceptance gauges here, the trainer's own
   endpoint from the trainer process (both URLs are printed and written to ``run.json``).
2. Train: ``python -m mtp_trainer.main --job FILE --output-dir OUT/trainer`` as a subprocess in
   its own process group, ``--resume`` (the default) or ``--fresh``; its ``metrics.jsonl`` drives
   a live progress bar (step, LM loss, MTP loss and agreement per depth).
3. Check the export ``OUT/trainer/hf`` has MTP weights, then start vLLM with the job's MTP
   speculation (``launcher.server_plan``, the operator's command line) and decode the prompt set
   while the collector scrapes the server every second: live acceptance on screen and in the
   gauges.
4. Speed: the same prompts on the speculative server and a plain-decoding twin (started together
   with it), in interleaved rounds; the speedup compares each side's fastest pass, the median
   per-round ratio is shown beside it (``PairedSpeed``), and greedy outputs must be equal.
5. Print the final table; write ``summary.json`` (figures, and vLLM's raw counter deltas so that
   anyone can recompute them), ``outputs.jsonl`` and the logs.

Every child runs in its own process group and is SIGTERM'ed then SIGKILL'ed as a group on exit,
on Ctrl-C and on SIGTERM, so no vLLM engine or worker outlives the run. ``OUT/run.json`` names
the groups while they run.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, start_http_server
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from mtp_api import contracts
from mtp_api import types as t
from mtp_api.acceptance import WindowFigures, counter_series, increments
from mtp_api.exposition import parse
from mtp_rollout.metrics.collector import Collector, ScrapeReport, Target, run_forever
from mtp_rollout.metrics.exporter import AcceptanceExporter
from mtp_rollout.metrics.status import rollout_status
from mtp_rollout.runtime.checkpoint_check import check_mtp_checkpoint
from mtp_rollout.runtime.launcher import server_plan
from mtp_rollout.runtime.server import VllmServer, free_port
from mtpjob.local.bench import DecodeRun, PairedSpeed, decode_pass, paired_passes


class RunError(RuntimeError):
    """A step failed; the message says which and where its log is."""


@dataclass
class RunOptions:
    job_file: Path
    output_dir: Path
    resume: bool = True
    max_steps: int | None = None
    prompts: int = 32
    max_tokens: int | None = None
    metrics_port: int = 0
    compare_plain: bool = True
    speed_rounds: int = 5


@dataclass
class _Children:
    """Process groups to kill on the way out."""

    groups: dict[str, int] = field(default_factory=dict)
    servers: list[VllmServer] = field(default_factory=list)

    def kill_all(self) -> None:
        for server in self.servers:
            server.stop(grace_s=10)
        for pgid in self.groups.values():
            _kill_group(pgid)


def _kill_group(pgid: int, grace_s: float = 10.0) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.2)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGKILL)


class LocalRun:
    def __init__(self, job: t.MTPTrainingJob, opts: RunOptions, console: Console | None = None) -> None:
        self.job = job
        self.opts = opts
        self.out = opts.output_dir
        self.console = console or Console()
        self.children = _Children()
        self.registry = CollectorRegistry()
        self.exporter = AcceptanceExporter(self.registry)
        self.run_info: dict[str, Any] = {"job": job.metadata.name}
        # Where decoded answers end (None: run every answer to max_tokens, ignoring EOS).
        self.stop: list[str] | None = None

    # ------------------------------------------------------------------------------ plumbing

    def _write_run_info(self) -> None:
        self.run_info["process_groups"] = dict(self.children.groups) | {
            f"vllm-{i}": s.proc.pid for i, s in enumerate(self.children.servers) if s.proc is not None
        }
        (self.out / "run.json").write_text(json.dumps(self.run_info, indent=2) + "\n")

    def _serve_metrics(self) -> None:
        server, _ = start_http_server(self.opts.metrics_port, addr="127.0.0.1", registry=self.registry)
        self.run_info["rollout_metrics_url"] = f"http://127.0.0.1:{server.server_port}/metrics"
        self.console.print(f"rollout metrics: {self.run_info['rollout_metrics_url']}")

    # ------------------------------------------------------------------------------ training

    def start_trainer(self, env: dict[str, str] | None = None) -> tuple[subprocess.Popen[bytes], Path, Path, int]:
        """``python -m mtp_trainer.main`` on the job in its own process group, logging to
        ``OUT/trainer.log``; returns the process, the log, its ``metrics.jsonl`` and where to read it from."""
        trainer_dir = self.out / "trainer"
        port = free_port()
        cmd = [sys.executable, "-m", "mtp_trainer.main", "--job", str(self.opts.job_file)]
        cmd += ["--output-dir", str(trainer_dir), "--resume" if self.opts.resume else "--fresh"]
        cmd += ["--metrics-port", str(port)]
        if self.opts.max_steps is not None:
            cmd += ["--max-steps", str(self.opts.max_steps)]
        self.run_info["trainer_metrics_url"] = f"http://127.0.0.1:{port}/metrics"
        self.console.print(f"trainer metrics: {self.run_info['trainer_metrics_url']}")
        log_path = self.out / "trainer.log"
        metrics_path = trainer_dir / contracts.METRICS_FILE
        offset = metrics_path.stat().st_size if metrics_path.exists() else 0
        with log_path.open("ab") as log:
            proc = subprocess.Popen(
                cmd,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                env=None if env is None else dict(os.environ, **env),
            )
        self.children.groups["trainer"] = proc.pid
        self._write_run_info()
        return proc, log_path, metrics_path, offset

    def train(self) -> Path:
        total = self.opts.max_steps or self.job.spec.trainer.hyperparameters.max_steps
        proc, log_path, metrics_path, offset = self.start_trainer()
        trainer_dir = self.out / "trainer"
        columns = (
            TextColumn("[bold]train[/bold]"),
            BarColumn(),
            TextColumn("{task.completed}/{task.total}"),
            TextColumn("{task.description}"),
            TimeElapsedColumn(),
        )
        with Progress(*columns, console=self.console, transient=False) as progress:
            task = progress.add_task("starting", total=total)
            while True:
                offset = self._follow(metrics_path, offset, progress, task)
                if proc.poll() is not None:
                    self._follow(metrics_path, offset, progress, task)
                    break
                time.sleep(0.5)
        del self.children.groups["trainer"]
        if proc.returncode != 0:
            raise RunError(f"trainer exited with code {proc.returncode}; see {log_path}:\n{_tail(log_path)}")
        hf = trainer_dir / contracts.EXPORT_SUBDIR
        if not (hf / "config.json").exists():
            raise RunError(f"trainer finished but wrote no export at {hf}; see {log_path}")
        return hf

    def _follow(self, path: Path, offset: int, progress: Progress, task: Any) -> int:
        if not path.exists():
            return offset
        with path.open() as fh:
            fh.seek(offset)
            chunk = fh.read()
        complete = chunk[: chunk.rfind("\n") + 1]
        for line in complete.splitlines():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue
            if "step" not in rec or "lm_loss" not in rec:
                continue
            if rec.get("split") == "validation":
                self.run_info["last_validation"] = rec
                continue
            self.run_info["last_train"] = rec
            mtp = " ".join(f"{x:.3f}" for x in rec.get("mtp_loss", []))
            agree = " ".join(f"{x:.0%}" for x in rec.get("mtp_agreement", []))
            progress.update(
                task, completed=rec["step"], description=f"lm {rec['lm_loss']:.3f}  mtp [{mtp}]  agree [{agree}]"
            )
        return offset + len(complete.encode())

    # ------------------------------------------------------------------------------ rollout

    def _start_server(self, model: Path, speculative: bool) -> VllmServer:
        """Start vLLM (the job's MTP speculation, or its plain twin) without waiting for it."""
        port = free_port()
        plan = server_plan(self.job, str(model.resolve()), host="127.0.0.1", port=port, speculative=speculative)
        server = VllmServer(plan, self.out / f"vllm-{'spec' if speculative else 'plain'}.log", port=port).start()
        self.children.servers.append(server)
        self._write_run_info()
        return server

    def _wait_ready(self, *servers: VllmServer) -> None:
        with self.console.status(f"starting vLLM ({len(servers)} server{'s' if len(servers) > 1 else ''})"):
            for server in servers:
                server.wait_ready()

    def _stop_server(self, server: VllmServer) -> None:
        server.stop()
        self.children.servers.remove(server)

    def serve_and_measure(
        self, model: Path, prompts: list[str], max_tokens: int
    ) -> tuple[DecodeRun, WindowFigures, dict[str, float], PairedSpeed | None]:
        """The speculative pass with live acceptance, then (unless --no-plain) the speed comparison.

        Both servers start together and stay up for the interleaved rounds (``PairedSpeed``)."""
        spec_server = self._start_server(model, speculative=True)
        plain_server = self._start_server(model, speculative=False) if self.opts.compare_plain else None
        try:
            self._wait_ready(*(s for s in (spec_server, plain_server) if s is not None))
            run, fig, raw = self.rollout(spec_server, prompts, max_tokens)
            speed = None
            if plain_server is not None:
                speed = self.compare_speed(spec_server, plain_server, prompts, max_tokens, k=run.k)
        finally:
            for server in (spec_server, plain_server):
                if server is not None:
                    self._stop_server(server)
        return run, fig, raw, speed

    def compare_speed(
        self, spec_server: VllmServer, plain_server: VllmServer, prompts: list[str], max_tokens: int, *, k: int
    ) -> PairedSpeed:
        rounds = self.opts.speed_rounds
        with self.console.status(f"speed: MTP k={k} against plain decoding, {rounds} interleaved rounds") as status:
            return paired_passes(
                spec_server,
                plain_server,
                self.job.metadata.name,
                prompts,
                max_tokens,
                k=k,
                rounds=rounds,
                stop=self.stop,
                on_round=lambda i, r: status.update(
                    f"speed: round {i + 1}/{rounds}: {r:.2f}x plain (MTP k={k} against plain decoding)"
                ),
            )

    def rollout(
        self, server: VllmServer, prompts: list[str], max_tokens: int
    ) -> tuple[DecodeRun, WindowFigures, dict[str, float]]:
        """Decode with speculation while the collector feeds the gauges; return the run, the collector's figures and raw deltas."""
        k = self.job.spec.rollout.speculative.max_k if self.job.spec.rollout else 1
        name, ns = self.job.metadata.name, self.job.metadata.namespace or "default"
        collector = Collector(window_s=3600, timeout_s=5)
        target = Target(ns, name, "local", server.base_url + "/metrics")
        stop = asyncio.Event()
        latest: dict[str, Any] = {}

        def on_figures(namespace: str, job: str, fig: WindowFigures, report: ScrapeReport) -> None:
            self.exporter.publish(namespace, job, fig, report)
            latest["status"] = rollout_status(fig, ready_replicas=1)

        loop = asyncio.new_event_loop()
        thread = threading.Thread(
            target=lambda: loop.run_until_complete(
                run_forever(collector, lambda: [target], on_figures, interval_s=1.0, stop=stop)
            ),
            daemon=True,
        )
        before, _ = counter_series(parse(server.metrics_text()).samples)
        thread.start()
        try:
            run = self._decode_live(server, prompts, max_tokens, k, latest)
            time.sleep(1.5)  # one more collector round after the last request
        finally:
            loop.call_soon_threadsafe(stop.set)
            thread.join(timeout=15)
        after, _ = counter_series(parse(server.metrics_text()).samples)
        inc = increments(before, after)
        raw = {
            "drafts": inc.drafts,
            "draft_tokens": inc.draft_tokens,
            "accepted": inc.accepted,
            "generation_tokens": inc.generation_tokens,
        }
        raw.update({f"accepted_pos_{p}": v for p, v in sorted(inc.per_position.items())})
        return run, collector.figures(ns, name), raw

    def _decode_live(
        self, server: VllmServer, prompts: list[str], max_tokens: int, k: int, latest: dict[str, Any]
    ) -> DecodeRun:
        """Decode the prompts in a worker thread while the screen shows the collector's latest status."""
        with self.console.status("decoding with MTP speculation") as status:
            done = threading.Event()
            result: dict[str, DecodeRun] = {}

            def work() -> None:
                try:
                    result["run"] = decode_pass(
                        server, self.job.metadata.name, prompts, max_tokens, label=f"mtp k={k}", k=k, stop=self.stop
                    )
                finally:
                    done.set()

            worker = threading.Thread(target=work, daemon=True)
            worker.start()
            while not done.wait(1.0):
                s = latest.get("status")
                if s is not None and s.acceptance_rate is not None:
                    status.update(
                        f"decoding with MTP speculation: acceptance {s.acceptance_rate:.0%}, mean length {s.mean_acceptance_length}, per position {s.per_position_acceptance}"
                    )
            if "run" not in result:
                raise RunError(f"decoding failed; see {server.log_path}:\n{server.log_tail()}")
        return result["run"]

    # ------------------------------------------------------------------------------ main

    def execute(self) -> dict[str, Any]:
        from mtpjob.local.prompts import pydoc_prompts

        if not self.opts.resume and self.out.exists():
            shutil.rmtree(self.out)
        self.out.mkdir(parents=True, exist_ok=True)
        self._serve_metrics()
        model = self.train()
        check_mtp_checkpoint(model)
        prompts = pydoc_prompts(self.opts.prompts)
        gen = (self.job.spec.rollout or t.RolloutSpec()).generation
        max_tokens = self.opts.max_tokens or gen.max_tokens
        spec, collected, raw, speed = self.serve_and_measure(model, prompts, max_tokens)
        summary = self._summary(spec, collected, raw, speed)
        (self.out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        with (self.out / "outputs.jsonl").open("w") as fh:
            for i, prompt in enumerate(prompts):
                row = {"prompt": prompt, "speculative": spec.outputs[i]}
                if speed is not None:
                    row["plain"] = speed.plain[0].outputs[i]
                fh.write(json.dumps(row) + "\n")
        self.console.print(final_table(summary))
        self.console.print(f"artifacts: {self.out}")
        return summary

    def _summary(
        self, spec: DecodeRun, fig: WindowFigures, raw: dict[str, float], speed: PairedSpeed | None
    ) -> dict[str, Any]:
        status = rollout_status(fig, ready_replicas=1)
        out: dict[str, Any] = {
            "job": self.job.metadata.name,
            "num_speculative_tokens": spec.k,
            "training": {
                "last_train": self.run_info.get("last_train"),
                "last_validation": self.run_info.get("last_validation"),
            },
            "acceptance": {
                "acceptance_rate": fig.acceptance_rate,
                "mean_acceptance_length": fig.mean_acceptance_length,
                "per_position": [fig.per_position[p] for p in sorted(fig.per_position)],
                "expected_tokens_per_forward": fig.expected_tokens_per_forward,
                "speedup_bound": fig.speedup_bound,
                "window_seconds": fig.seconds,
            },
            "vllm_counter_deltas": raw,
            "status": status.wire(),
            "speculative": {"tokens_per_second": spec.tokens_per_second, "completion_tokens": spec.completion_tokens},
            "metrics_urls": {k: v for k, v in self.run_info.items() if k.endswith("_url")},
        }
        if speed is not None:
            # Speed figures come from the interleaved rounds; the live pass above only gives acceptance.
            out["speculative"]["tokens_per_second"] = speed.spec_tokens_per_second
            out["plain"] = {
                "tokens_per_second": speed.plain_tokens_per_second,
                "completion_tokens": speed.plain[0].completion_tokens,
            }
            out["speedup"] = speed.speedup
            out["speed"] = speed.to_json()
            out["greedy_outputs_equal"] = speed.outputs_equal and spec.outputs == speed.plain[0].outputs
        return out


def final_table(summary: dict[str, Any]) -> Table:
    table = Table(title=f"mtpjob run {summary['job']}: MTP k={summary['num_speculative_tokens']}")
    table.add_column("figure")
    table.add_column("value", justify="right")
    tr = summary["training"].get("last_train") or {}
    va = summary["training"].get("last_validation") or {}
    if tr:
        table.add_row("train step", str(tr.get("step")))
        table.add_row("train LM loss", f"{tr['lm_loss']:.3f}")
        table.add_row("train MTP loss per depth", " ".join(f"{x:.3f}" for x in tr.get("mtp_loss", [])))
    if va:
        table.add_row("validation LM loss", f"{va['lm_loss']:.3f}")
        table.add_row("validation MTP loss per depth", " ".join(f"{x:.3f}" for x in va.get("mtp_loss", [])))
        table.add_row("validation MTP agreement per depth", " ".join(f"{x:.1%}" for x in va.get("mtp_agreement", [])))
    acc = summary["acceptance"]
    fmt = lambda v, p: "-" if v is None else p.format(v)  # noqa: E731
    table.add_row("acceptance rate", fmt(acc["acceptance_rate"], "{:.1%}"))
    table.add_row("mean acceptance length", fmt(acc["mean_acceptance_length"], "{:.3f}"))
    table.add_row("per-position acceptance", " ".join(f"{x:.1%}" for x in acc["per_position"]) or "-")
    table.add_row("speedup bound (tokens / target forward)", fmt(acc["speedup_bound"], "{:.2f}"))
    speed_rows(table, summary)
    return table


def speed_rows(table: Table, summary: dict[str, Any]) -> None:
    """The speed rows of both final tables: tokens/s, the speedup and its rounds, greedy equality."""
    table.add_row("MTP tokens/s (1 request at a time)", f"{summary['speculative']['tokens_per_second']:.1f}")
    if "plain" not in summary:
        return
    speed = summary["speed"]
    rounds = " ".join(f"{r:.2f}" for r in speed["speedup_rounds"])
    table.add_row("plain tokens/s", f"{summary['plain']['tokens_per_second']:.1f}")
    table.add_row("measured speedup (fastest passes)", f"{summary['speedup']:.2f}x")
    table.add_row("per-round ratios (median)", f"{rounds} ({speed['median_ratio']:.2f}x)")
    table.add_row("greedy outputs equal", "yes" if summary.get("greedy_outputs_equal") else "NO")


def _tail(path: Path, lines: int = 20) -> str:
    with contextlib.suppress(OSError):
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    return ""


def run_local(job: t.MTPTrainingJob, opts: RunOptions, console: Console | None = None) -> int:
    """Run the job; 0 on success, 1 on a failed step, 130 on Ctrl-C or SIGTERM. Children never outlive it."""
    console = console or Console()
    runner: LocalRun
    if job.spec.pipeline == t.Pipeline.RLVR:
        from mtpjob.local.local_rlvr import LocalRLVR

        runner = LocalRLVR(job, opts, console)
    else:
        runner = LocalRun(job, opts, console)

    def on_term(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, on_term)
    # A shell starts background jobs with SIGINT ignored; Ctrl-C must still stop the run.
    previous_int = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        runner.execute()
        return 0
    except KeyboardInterrupt:
        console.print("[yellow]interrupted: stopping the trainer and vLLM[/yellow]")
        return 130
    except RunError as exc:
        console.print(f"[red]error:[/red] {exc}")
        return 1
    finally:
        runner.children.kill_all()
        signal.signal(signal.SIGTERM, previous)
        signal.signal(signal.SIGINT, previous_int)
