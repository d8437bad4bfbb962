"""Loopback "rollout pods" that serve recorded vLLM ``/metrics`` bodies, for the operator benchmark.

One HTTP server on every loopback address (it binds ``0.0.0.0``; Linux routes all of 127.0.0.0/8 to
it), so each pod gets an IP of its own (:func:`pod_ip`) and the server tells pods apart by the
``Host`` header. The bodies are real: two scrapes of a vLLM 0.32 CPU server doing MTP speculation
(``tests/rollout/fixtures/vllm_k2_random_{a,b}.txt``, 630 lines each). A pod's ``n``-th answer is
the first recording with every counter advanced by ``n`` times the difference between the two
recordings (gauges as in the second), so each pod's counters grow as a busy engine's do and the
operator's windows see real drafts and acceptances every round.
"""

from __future__ import annotations

import asyncio
import threading
from collections import Counter
from pathlib import Path

from aiohttp import web

FIXTURES = Path(__file__).resolve().parents[1] / "tests" / "rollout" / "fixtures"
RECORDINGS = ("vllm_k2_random_a.txt", "vllm_k2_random_b.txt")
RECORDED_MODEL = 'model_name="tiny"'


def pod_ip(i: int) -> str:
    """A distinct loopback address per pod index (up to 64516 pods)."""
    return f"127.{1 + i // 254 // 254}.{i // 254 % 254}.{1 + i % 254}"


class _Body:
    """The recording as lines; counters extrapolated per answer number."""

    def __init__(self, first: str, second: str) -> None:
        counters = {
            line.split()[2]
            for line in first.splitlines()
            if line.startswith("# TYPE") and line.split()[3] in ("counter", "histogram")
        }
        second_values = {}
        for line in second.splitlines():
            if line and not line.startswith("#"):
                key, value = line.rsplit(" ", 1)
                second_values[key] = float(value)
        self.lines: list[tuple[str, float, float] | str] = []
        for line in first.splitlines():
            if not line or line.startswith("#"):
                self.lines.append(line)
                continue
            key, value = line.rsplit(" ", 1)
            family = key.split("{", 1)[0]
            base = family.removesuffix("_total").removesuffix("_bucket").removesuffix("_count").removesuffix("_sum")
            a, b = float(value), second_values.get(key, float(value))
            is_counter = family in counters or base in counters or base + "_total" in counters
            self.lines.append((key, a, b - a) if is_counter else (key, b, 0.0))

    def render(self, n: int, model: str) -> str:
        """Answer number ``n``, labelled with the served model name ``model`` (the operator counts only
        the job's own model; the recordings say ``tiny``)."""
        out = []
        for line in self.lines:
            if isinstance(line, str):
                out.append(line)
            else:
                key, a, step = line
                out.append(f"{key} {a + n * step}")
        return ("\n".join(out) + "\n").replace(RECORDED_MODEL, f'model_name="{model}"')


class RecordedPods:
    """The server, in a thread with its own event loop; ``hits`` counts answers per pod IP, and
    ``models`` gives each pod IP its served model name (the job's)."""

    def __init__(self) -> None:
        first, second = ((FIXTURES / name).read_text() for name in RECORDINGS)
        self.body = _Body(first, second)
        self.hits: Counter[str] = Counter()
        self.models: dict[str, str] = {}
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._started = threading.Event()
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._loop.run_until_complete, args=(self._main(),), daemon=True)

    async def _handle(self, request: web.Request) -> web.Response:
        ip = (request.host or "").rsplit(":", 1)[0]
        n = self.hits[ip]
        self.hits[ip] = n + 1
        return web.Response(text=self.body.render(n, self.models.get(ip, "tiny")), content_type="text/plain")

    async def _main(self) -> None:
        self._stop = asyncio.Event()
        app = web.Application()
        app.router.add_get("/metrics", self._handle)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "0.0.0.0", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self._started.set()
        await self._stop.wait()
        await runner.cleanup()

    def __enter__(self) -> RecordedPods:
        self._thread.start()
        if not self._started.wait(30):
            raise RuntimeError("recorded pods server did not start")
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._stop is not None
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(30)
