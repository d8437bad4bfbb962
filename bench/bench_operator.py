"""Benchmark the operator against the test API server: cost per job created and per idle reconcile.

For each N it starts a fresh test API server holding N MTPTrainingJobs, starts the real operator
(Kopf, standalone) and measures:
- API requests and writes per job while the operator creates everything (until every job has all
  its children and status Created; jobs carry no finalizer);
- requests and writes per idle reconcile: the resync timer reconciles every job again with nothing
  changed (the target is zero writes);
- p50/p99 of the reconcile handler's latency, API calls included, for both phases;
- the process RSS before and after the operator started (the server runs in the same process, so
  the difference is what the operator added).

Run:  python bench/bench_operator.py --jobs 1 100 1000 [--markdown docs/bench-operator.md]
"""

from __future__ import annotations

import argparse
import copy
import datetime
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

import mtp_operator.handlers as handlers_mod
from mtp_api import types as t
from mtp_operator import metrics
from mtp_operator.settings import OperatorConfig

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # the test API server lives in tests/apiserver, which is not shipped

from tests.apiserver.apiserver import ApiCounters  # noqa: E402
from tests.apiserver.harness import OperatorThread, ServerThread, wait_for  # noqa: E402

RESYNC_SECONDS = 5.0


def rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def job_body(i: int) -> dict[str, Any]:
    body = copy.deepcopy(yaml.safe_load((REPO / "examples" / "tiny-sft.yaml").read_text()))
    body["metadata"] = {"name": f"job-{i:04d}", "namespace": f"team-{i % 10}"}
    body["spec"]["trainer"]["volumes"] = {"checkpoints": {"claimName": "ckpt", "mountPath": "/ckpt"}}
    return body


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
    rss_server_mib: float
    rss_total_mib: float


def ready(server: ServerThread, n: int) -> bool:
    def check() -> bool:
        jobs = server.server.find(t.PLURAL)
        if len(jobs) != n or len(server.server.find("deployments")) != n:
            return False
        return all((j.get("status") or {}).get("state") == "Created" for j in jobs)

    return server.call(check)


def delta(after: ApiCounters, before: ApiCounters) -> tuple[int, int]:
    return after.total - before.total, after.writes - before.writes


def run_one(n: int) -> Result:
    timings = Timings()
    timings.install()
    try:
        with ServerThread() as server:

            async def store_jobs() -> None:
                for i in range(n):
                    await server.server.put_object(t.PLURAL, job_body(i))

            server.call(store_jobs)
            rss_server = rss_mib()
            config = OperatorConfig(standalone=True, metrics_port=0, health_port=0, resync_seconds=RESYNC_SECONDS)
            start_counts = server.call(server.server.counters.snapshot)
            started = time.perf_counter()
            with OperatorThread(server.url, config):
                wait_for(lambda: ready(server, n), timeout=600, interval=0.2)
                create_seconds = time.perf_counter() - started
                # Let stragglers (watch events of the last writes) settle before the idle window.
                wait_for(lambda: _quiet(server), timeout=120, interval=0.2)
                created = server.call(server.server.counters.snapshot)
                timings.phase = "idle"
                timer_before = metrics.RECONCILES.labels("timer")._value.get()
                wait_for(
                    lambda: metrics.RECONCILES.labels("timer")._value.get() - timer_before >= n,
                    timeout=600,
                    interval=0.2,
                )
                idle = server.call(server.server.counters.snapshot)
                idle_count = int(metrics.RECONCILES.labels("timer")._value.get() - timer_before)
                rss_total = rss_mib()
    finally:
        timings.uninstall()
    req_create, wr_create = delta(created, start_counts)
    req_idle, wr_idle = delta(idle, created)
    return Result(
        jobs=n,
        create_seconds=create_seconds,
        requests_per_job=req_create / n,
        writes_per_job=wr_create / n,
        idle_reconciles=idle_count,
        requests_per_idle=req_idle / idle_count,
        writes_per_idle=wr_idle / idle_count,
        p50_create_ms=pct(timings.samples["create"], 0.5),
        p99_create_ms=pct(timings.samples["create"], 0.99),
        p50_idle_ms=pct(timings.samples["idle"], 0.5),
        p99_idle_ms=pct(timings.samples["idle"], 0.99),
        rss_server_mib=rss_server,
        rss_total_mib=rss_total,
    )


def _quiet(server: ServerThread) -> bool:
    """True once no request arrived for half a second."""
    before = server.call(lambda: server.server.counters.total)
    time.sleep(0.5)
    return bool(server.call(lambda: server.server.counters.total) == before)


HEADER = (
    "| jobs | create wall s | API requests / job created | writes / job created | idle reconciles | "
    "requests / idle reconcile | writes / idle reconcile | p50 / p99 reconcile ms (create) | "
    "p50 / p99 reconcile ms (idle) | RSS server only MiB | RSS server + operator MiB |\n"
    "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
)


def row(r: Result) -> str:
    return (
        f"| {r.jobs} | {r.create_seconds:.1f} | {r.requests_per_job:.2f} | {r.writes_per_job:.2f} | "
        f"{r.idle_reconciles} | {r.requests_per_idle:.3f} | {r.writes_per_idle:.3f} | "
        f"{r.p50_create_ms:.1f} / {r.p99_create_ms:.1f} | {r.p50_idle_ms:.2f} / {r.p99_idle_ms:.2f} | "
        f"{r.rss_server_mib:.0f} | {r.rss_total_mib:.0f} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--jobs", type=int, nargs="+", default=[1, 100, 1000])
    parser.add_argument("--markdown", type=Path, help="also write the table into this file's results block")
    args = parser.parse_args()
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
