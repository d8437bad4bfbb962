"""Benchmark the operator against the test API server: cost per job created and per idle reconcile.

For each N it starts a fresh test API server holding N MTPTrainingJobs in this process, starts the
real operator (Kopf, standalone) in a child process of its own, as in a cluster, and measures:
- API requests and writes per job while the operator creates everything (until every job has all
  its children and status Created; jobs carry no finalizer);
- requests and writes per idle reconcile: the resync timer reconciles every job again with nothing
  changed (the target is zero writes);
- p50/p99 of the reconcile handler's latency, API calls included, for both phases;
- the CPU time each process used until every job was Created (the operator's includes its start-up;
  the server's, in this process, includes polling for readiness);
- the operator process's RSS at the end and its peak (VmHWM), and the server process's RSS with the
  N jobs stored (before the operator started) and at the end (with every child, and its event log);
- a scrape phase: one Ready rollout pod per job, each at its own loopback IP, serving recorded vLLM
  ``/metrics`` bodies whose counters advance every answer (``recorded_vllm_pods.py``); the operator
  scrapes them every ``SCRAPE_SECONDS``. Measured: the wall time of a full round (every pod scraped
  once more), the operator's CPU per pod scrape, API writes per job over the phase (pods turning
  Ready, acceptance into status at most once per ``status_min_interval_seconds``) and the RSS after.

The child (``--operator URL``) is driven over stdin/stdout: it prints ``imported`` before starting the
operator (the create clock starts there), reads N on stdin to start the idle phase, prints the idle
count, its latency samples' percentiles and its RSS as one JSON line; ``scrape`` starts the scrape
phase's CPU clock, ``report`` prints its CPU and RSS, and the next line stops it.

Run:  python bench/bench_operator.py --jobs 1 100 1000 [--markdown docs/bench-operator.md]
"""

from __future__ import annotations

import argparse
import copy
import datetime
import json
import os
import platform
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

import mtp_operator.handlers as handlers_mod
from mtp_api import types as t
from mtp_operator import metrics, names
from mtp_operator.settings import OperatorConfig

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # the test API server lives in tests/apiserver, which is not shipped

from tests.apiserver.apiserver import ApiCounters  # noqa: E402
from tests.apiserver.harness import OperatorThread, ServerThread, wait_for  # noqa: E402

sys.path.insert(0, str(REPO / "bench"))
from recorded_vllm_pods import RecordedPods, pod_ip  # noqa: E402

RESYNC_SECONDS = 5.0
SCRAPE_SECONDS = 10.0
SCRAPE_ROUNDS = 3  # full rounds measured after every pod's first scrape


def rss_mib(field: str = "VmRSS") -> float:
    """This process's resident memory (``VmRSS``) or its peak (``VmHWM``), in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def job_body(i: int, rollout_port: int) -> dict[str, Any]:
    body = copy.deepcopy(yaml.safe_load((REPO / "examples" / "tiny-sft.yaml").read_text()))
    body["metadata"] = {"name": f"job-{i:04d}", "namespace": f"team-{i % 10}"}
    body["spec"]["trainer"]["volumes"] = {"checkpoints": {"claimName": "ckpt", "mountPath": "/ckpt"}}
    body["spec"]["rollout"]["port"] = rollout_port  # the recorded pods' server
    return body


def rollout_pod(deployment: dict[str, Any], i: int) -> dict[str, Any]:
    """A Ready pod of ``deployment`` (its template's labels) at loopback IP ``pod_ip(i)``, as a kubelet
    would report it."""
    meta = deployment["metadata"]
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": f"{meta['name']}-0",
            "namespace": meta["namespace"],
            "labels": dict(deployment["spec"]["template"]["metadata"]["labels"]),
        },
        "spec": {"containers": [{"name": "vllm", "image": "vllm"}]},
        "status": {
            "phase": "Running",
            "podIP": pod_ip(i),
            "conditions": [{"type": "Ready", "status": "True"}],
            "containerStatuses": [{"name": "vllm", "ready": True, "restartCount": 0}],
        },
    }


class Timings:
    """Wraps ``reconcile`` to record each call's wall time, tagged with the current phase."""

    def __init__(self) -> None:
        self.phase = "create"
        self.samples: dict[str, list[float]] = {"create": [], "idle": []}
        self._inner = handlers_mod.reconcile

    def install(self) -> None:
        async def timed(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return await self._inner(*args, **kwargs)
            finally:
                self.samples[self.phase].append(time.perf_counter() - start)

        handlers_mod.reconcile = timed  # type: ignore[assignment]

    def uninstall(self) -> None:
        handlers_mod.reconcile = self._inner


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))] * 1000


@dataclass
class Result:
    jobs: int
    create_seconds: float
    requests_per_job: float
    writes_per_job: float
    idle_reconciles: int
    requests_per_idle: float
    writes_per_idle: float
    p50_create_ms: float
    p99_create_ms: float
    p50_idle_ms: float
    p99_idle_ms: float
    operator_cpu_s: float
    server_cpu_s: float
    rss_server_mib: float
    rss_server_end_mib: float
    rss_operator_mib: float
    rss_operator_peak_mib: float
    scrape_round_s: float
    scrape_cpu_ms_per_pod: float
    scrape_writes_per_job: float
    rss_operator_scrape_mib: float


def ready(server: ServerThread, n: int) -> bool:
    def check() -> bool:
        """Reads the store in place: ``find`` would deep-copy every job and Deployment at each poll."""
        objects = server.server.objects
        jobs = [o for k, o in objects.items() if k[2] == t.PLURAL]
        if len(jobs) != n or sum(1 for k in objects if k[2] == "deployments") != n:
            return False
        return all((j.get("status") or {}).get("state") == "Created" for j in jobs)

    return server.call(check)


def delta(after: ApiCounters, before: ApiCounters) -> tuple[int, int]:
    return after.total - before.total, after.writes - before.writes


def operator_process(url: str, resync: float) -> None:
    """``--operator URL``: the operator alone in this process, phases driven by the parent (module doc)."""
    timings = Timings()
    timings.install()
    config = OperatorConfig(
        standalone=True, metrics_port=0, health_port=0, resync_seconds=resync, scrape_seconds=SCRAPE_SECONDS
    )
    print("imported", flush=True)
    with OperatorThread(url, config):
        n = int(sys.stdin.readline())
        create_cpu = time.process_time()
        timings.phase = "idle"
        timer = metrics.RECONCILES.labels("timer")
        before = timer._value.get()
        wait_for(lambda: timer._value.get() - before >= n, timeout=600, interval=0.2)
        report = {
            "idle_reconciles": int(timer._value.get() - before),
            "create_ms": [pct(timings.samples["create"], 0.5), pct(timings.samples["create"], 0.99)],
            "idle_ms": [pct(timings.samples["idle"], 0.5), pct(timings.samples["idle"], 0.99)],
            "create_cpu_s": create_cpu,
            "rss_mib": rss_mib(),
            "peak_mib": rss_mib("VmHWM"),
        }
        print(json.dumps(report), flush=True)
        sys.stdin.readline()  # "scrape"
        scrape_cpu = time.process_time()
        print("ok", flush=True)
        sys.stdin.readline()  # "report"
        scrape = {"cpu_s": time.process_time() - scrape_cpu, "rss_mib": rss_mib(), "peak_mib": rss_mib("VmHWM")}
        print(json.dumps(scrape), flush=True)
        sys.stdin.readline()


def scrape_phase(server: ServerThread, pods: RecordedPods, n: int) -> tuple[float, int]:
    """Create one Ready rollout pod per job; wait until every pod answered ``1 + SCRAPE_ROUNDS`` scrapes.
    Returns the mean wall time of a full round and the pod scrapes served in the phase."""

    async def create() -> None:
        deployments = sorted(
            (o for k, o in server.server.objects.items() if k[2] == "deployments"),
            key=lambda d: (d["metadata"]["namespace"], d["metadata"]["name"]),
        )
        for i, deployment in enumerate(deployments):
            pods.models[pod_ip(i)] = deployment["metadata"]["labels"][names.LABEL_JOB]  # served model = job name
            await server.server.put_object("pods", rollout_pod(deployment, i))

    server.call(create)
    ips = [pod_ip(i) for i in range(n)]
    wait_for(lambda: min(pods.hits[ip] for ip in ips) >= 1, timeout=600, interval=0.1)
    first = time.perf_counter()
    wait_for(lambda: min(pods.hits[ip] for ip in ips) >= 1 + SCRAPE_ROUNDS, timeout=1200, interval=0.1)
    return (time.perf_counter() - first) / SCRAPE_ROUNDS, sum(pods.hits[ip] for ip in ips)


def run_one(n: int) -> Result:
    with ServerThread() as server, RecordedPods() as pods:

        async def store_jobs() -> None:
            for i in range(n):
                await server.server.put_object(t.PLURAL, job_body(i, pods.port))

        server.call(store_jobs)
        rss_server = rss_mib()
        start_counts = server.call(server.server.counters.snapshot)
        cmd = [sys.executable, __file__, "--operator", server.url, "--resync", str(RESYNC_SECONDS)]
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
        child = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
        assert child.stdin is not None and child.stdout is not None
        try:
            if child.stdout.readline().strip() != "imported":
                raise RuntimeError("the operator process did not start")
            started, server_cpu = time.perf_counter(), time.process_time()
            wait_for(lambda: ready(server, n), timeout=600, interval=0.2)
            create_seconds = time.perf_counter() - started
            server_cpu = time.process_time() - server_cpu
            # Let stragglers (watch events of the last writes) settle before the idle window.
            wait_for(lambda: _quiet(server), timeout=120, interval=0.2)
            created = server.call(server.server.counters.snapshot)
            child.stdin.write(f"{n}\n")
            child.stdin.flush()
            report = json.loads(child.stdout.readline())
            idle = server.call(server.server.counters.snapshot)
            rss_server_end = rss_mib()
            child.stdin.write("scrape\n")
            child.stdin.flush()
            if child.stdout.readline().strip() != "ok":
                raise RuntimeError("the operator process did not start the scrape phase")
            round_s, scrapes = scrape_phase(server, pods, n)
            scraped = server.call(server.server.counters.snapshot)
            child.stdin.write("report\n")
            child.stdin.flush()
            scrape = json.loads(child.stdout.readline())
            child.stdin.write("stop\n")
            child.stdin.flush()
            child.wait(60)
        finally:
            if child.poll() is None:
                child.kill()
    req_create, wr_create = delta(created, start_counts)
    req_idle, wr_idle = delta(idle, created)
    _, wr_scrape = delta(scraped, idle)
    idle_count = report["idle_reconciles"]
    return Result(
        jobs=n,
        create_seconds=create_seconds,
        requests_per_job=req_create / n,
        writes_per_job=wr_create / n,
        idle_reconciles=idle_count,
        requests_per_idle=req_idle / idle_count,
        writes_per_idle=wr_idle / idle_count,
        p50_create_ms=report["create_ms"][0],
        p99_create_ms=report["create_ms"][1],
        p50_idle_ms=report["idle_ms"][0],
        p99_idle_ms=report["idle_ms"][1],
        operator_cpu_s=report["create_cpu_s"],
        server_cpu_s=server_cpu,
        rss_server_mib=rss_server,
        rss_server_end_mib=rss_server_end,
        rss_operator_mib=report["rss_mib"],
        rss_operator_peak_mib=report["peak_mib"],
        scrape_round_s=round_s,
        scrape_cpu_ms_per_pod=1000 * scrape["cpu_s"] / max(scrapes, 1),
        scrape_writes_per_job=wr_scrape / n,
        rss_operator_scrape_mib=scrape["rss_mib"],
    )


def _quiet(server: ServerThread) -> bool:
    """True once no request arrived for half a second."""
    before = server.call(lambda: server.server.counters.total)
    time.sleep(0.5)
    return bool(server.call(lambda: server.server.counters.total) == before)


HEADER = (
    "| jobs | create wall s | create CPU s operator / server | API requests / job created | writes / job created | idle reconciles | "
    "requests / idle reconcile | writes / idle reconcile | p50 / p99 reconcile ms (create) | "
    "p50 / p99 reconcile ms (idle) | RSS server MiB (jobs stored / end) | RSS operator MiB | peak RSS operator MiB | "
    "scrape round s | operator CPU ms / pod scrape | writes / job (scrape phase) | RSS operator MiB after scrapes |\n"
    "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
)


def row(r: Result) -> str:
    return (
        f"| {r.jobs} | {r.create_seconds:.1f} | {r.operator_cpu_s:.1f} / {r.server_cpu_s:.1f} | "
        f"{r.requests_per_job:.2f} | {r.writes_per_job:.2f} | "
        f"{r.idle_reconciles} | {r.requests_per_idle:.3f} | {r.writes_per_idle:.3f} | "
        f"{r.p50_create_ms:.1f} / {r.p99_create_ms:.1f} | {r.p50_idle_ms:.2f} / {r.p99_idle_ms:.2f} | "
        f"{r.rss_server_mib:.0f} / {r.rss_server_end_mib:.0f} | {r.rss_operator_mib:.0f} | {r.rss_operator_peak_mib:.0f} | "
        f"{r.scrape_round_s:.1f} | {r.scrape_cpu_ms_per_pod:.2f} | {r.scrape_writes_per_job:.2f} | "
        f"{r.rss_operator_scrape_mib:.0f} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--jobs", type=int, nargs="+", default=[1, 100, 1000])
    parser.add_argument("--markdown", type=Path, help="also write the table into this file's results block")
    parser.add_argument("--operator", metavar="URL", help=argparse.SUPPRESS)  # the child process
    parser.add_argument("--resync", type=float, default=RESYNC_SECONDS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.operator:
        operator_process(args.operator, args.resync)
        return
    results = []
    print(HEADER)
    for n in args.jobs:
        r = run_one(n)
        results.append(r)
        print(row(r), flush=True)
    if args.markdown:
        table = "\n".join([HEADER, *(row(r) for r in results)])
        stamp = (
            f"Measured {datetime.date.today().isoformat()} on {platform.machine()} / Python "
            f"{platform.python_version()}, {len(__import__('os').sched_getaffinity(0))} CPUs."
        )
        text = args.markdown.read_text() if args.markdown.exists() else ""
        begin, end = "<!-- bench:begin -->", "<!-- bench:end -->"
        block = f"{begin}\n{stamp}\n\n{table}\n{end}"
        if begin in text and end in text:
            text = text[: text.index(begin)] + block + text[text.index(end) + len(end) :]
        else:
            text += "\n" + block + "\n"
        args.markdown.write_text(text)


if __name__ == "__main__":
    main()
