"""Loopback HTTP "rollout pods" that misbehave on purpose, for the collector tests.

Each pod serves a script of responses on ``/metrics``: exposition text, or one of the
``SLOW``/``FAIL``/``GARBAGE``/``EMPTY`` behaviours; the last entry repeats.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from aiohttp import web

SLOW, FAIL, GARBAGE, EMPTY = "<slow>", "<fail>", "<garbage>", "<empty>"


class FakePod:
    def __init__(self, script: list[str]) -> None:
        self.script = list(script)
        self.hits = 0

    async def handle(self, request: web.Request) -> web.Response:
        body = self.script[min(self.hits, len(self.script) - 1)]
        self.hits += 1
        if body == SLOW:
            await asyncio.sleep(5)
            return web.Response(text="")
        if body == FAIL:
            return web.Response(status=503, text="engine dead")
        if body == GARBAGE:
            return web.Response(text="<html>\x00\x01 not metrics {{{ 1 2 3\nvllm:spec_decode_num_drafts_total{ NaN\n")
        if body == EMPTY:
            return web.Response(text="")
        return web.Response(text=body, content_type="text/plain")


@asynccontextmanager
async def serve_pods(pods: dict[str, FakePod]) -> AsyncIterator[dict[str, str]]:
    """Serve each pod under ``/<name>/metrics`` on one loopback port; yields name -> URL."""
    app = web.Application()
    for name, pod in pods.items():
        app.router.add_get(f"/{name}/metrics", pod.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield {name: f"http://127.0.0.1:{port}/{name}/metrics" for name in pods}
    finally:
        await runner.cleanup()
