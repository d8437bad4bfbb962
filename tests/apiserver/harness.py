"""Run the test API server and the operator each in a thread with its own event loop.

Kopf's own advice: run ``kopf.operator`` in a thread with ``ready_flag``/``stop_flag``; in the test's
event loop, Kopf's stop would cancel the test's own tasks. Tests stay synchronous and talk to the
server through ``ServerThread.call``, which runs a function inside the server's loop.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from typing import Any

import kmock
import kopf

from mtp_api import types as t
from mtp_operator.handlers import make_registry, make_settings
from mtp_operator.main import run_operator
from mtp_operator.runtime import Runtime
from mtp_operator.settings import OperatorConfig
from tests.apiserver.apiserver import TestApiServer


class ServerThread:
    """A ``TestApiServer`` on a loopback port, with the MTPTrainingJob CRD and Kopf's peering kinds."""

    def __init__(self, gc: bool = True) -> None:
        self.loop = asyncio.new_event_loop()
        self.server = TestApiServer(gc=gc)
        self.server.resources.load_bundled()
        self.server.add_crd(t.GROUP, t.VERSION, t.PLURAL, t.KIND)
        self.server.add_crd("kopf.dev", "v1", "kopfpeerings", "KopfPeering", status=False)
        self.url = ""
        self._started = threading.Event()
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self.loop.run_until_complete, args=(self._main(),), daemon=True)

    async def _main(self) -> None:
        self._stop = asyncio.Event()
        async with self.server, kmock.Server(self.server) as srv:
            self.url = str(srv.url).rstrip("/")
            self._started.set()
            await self._stop.wait()
            self.server.close_watches()

    def __enter__(self) -> ServerThread:
        self._thread.start()
        if not self._started.wait(30):
            raise RuntimeError("test API server did not start")
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._stop is not None
        self.loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(30)

    def call(self, fn: Callable[[], Any]) -> Any:
        """Run ``fn`` (sync or async) in the server's loop and return its result."""

        async def wrapper() -> Any:
            result = fn()
            if asyncio.iscoroutine(result):
                return await result
            return result

        return asyncio.run_coroutine_threadsafe(wrapper(), self.loop).result(300)


class OperatorThread:
    """The real operator (``run_operator``) against ``url`` without credentials, or, when ``url`` is
    None, wherever Kopf's default login (kubeconfig, service account) points."""

    def __init__(self, url: str | None, config: OperatorConfig | None = None) -> None:
        self.config = config or OperatorConfig(standalone=True, metrics_port=0, health_port=0, resync_seconds=3600)
        if url is None:
            self.registry = make_registry(self.config)
        else:

            def login(**_: Any) -> kopf.ConnectionInfo:
                return kopf.ConnectionInfo(server=url, insecure=True, default_namespace="default")

            self.registry = make_registry(self.config, login)

        self.memo = kopf.Memo()
        self.settings = make_settings(self.config)
        # Exit promptly: the defaults give workers seconds to drain queues of a long-lived process.
        self.settings.batching.exit_timeout = 0.1
        self.settings.background.instant_exit_timeout = 0.1
        self.settings.persistence.consistency_timeout = 0.5
        self._ready = threading.Event()
        self._stop = threading.Event()
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        try:
            asyncio.run(
                run_operator(
                    self.config,
                    registry=self.registry,
                    ready_flag=self._ready,
                    stop_flag=self._stop,
                    memo=self.memo,
                    settings=self.settings,
                )
            )
        except BaseException as exc:  # noqa: BLE001 - reported by __enter__; a thread cannot raise into the test
            self.error = exc
            self._ready.set()

    def __enter__(self) -> OperatorThread:
        self._thread.start()
        if not self._ready.wait(30) or self.error is not None:
            raise RuntimeError(f"operator did not start: {self.error!r}")
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def runtime(self) -> Runtime:
        """The operator's in-memory state (metrics store included), set by its startup handler."""
        found = wait_for(lambda: getattr(self.memo, "runtime", None))
        assert isinstance(found, Runtime)
        return found

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(30)
        if self._thread.is_alive():
            raise RuntimeError("operator did not stop")


def wait_for(predicate: Callable[[], Any], timeout: float = 30.0, interval: float = 0.02) -> Any:
    """Poll until ``predicate()`` is truthy; the timeout only bounds a hang, it is not a measurement."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"condition not met within {timeout}s")
        time.sleep(interval)
