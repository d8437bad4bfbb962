"""Start, wait for, and stop a local vLLM server process, leaving no orphans.

Why process groups: vLLM's API server spawns an engine core and workers. The server is started
in a new session (its own process group), and stopping signals the whole group (SIGTERM, then
SIGKILL after a grace period), so Ctrl-C or a failed test never leaves a worker holding a core.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from mtp_rollout.runtime.launcher import ServerPlan


class ServerError(RuntimeError):
    """The server exited or did not become healthy; the message carries its log tail."""


class VllmServer:
    """One vLLM server process (group) on a loopback port."""

    def __init__(self, plan: ServerPlan, log_path: Path, *, host: str = "127.0.0.1", port: int) -> None:
        self.plan = plan
        self.log_path = log_path
        self.base_url = f"http://{host}:{port}"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> VllmServer:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ, **self.plan.env)
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, *self.plan.args],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        return self

    def log_tail(self, lines: int = 25) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def wait_ready(self, timeout_s: float = 600.0) -> None:
        """Poll ``/health`` until it answers 200; raise ServerError if the process dies or time runs out."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc is None or self.proc.poll() is not None:
                code = None if self.proc is None else self.proc.returncode
                raise ServerError(f"vLLM exited with code {code} before it was ready:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(self.base_url + "/health", timeout=2) as resp:
                    if resp.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.5)
        raise ServerError(f"vLLM not healthy after {timeout_s:.0f}s:\n{self.log_tail()}")

    def stop(self, grace_s: float = 20.0) -> None:
        """SIGTERM the process group, SIGKILL it after ``grace_s``; safe to call twice."""
        if self.proc is None:
            return
        pgid = self.proc.pid
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            pass
        # Workers may outlive the API server: kill whatever is left of the group.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=5)
        self.proc = None

    def metrics_text(self, timeout_s: float = 5.0) -> str:
        with urllib.request.urlopen(self.base_url + "/metrics", timeout=timeout_s) as resp:
            return resp.read().decode()

    def complete(
        self,
        model: str,
        prompt: str,
        max_tokens: int,
        *,
        temperature: float = 0.0,
        timeout_s: float = 300.0,
        stop: list[str] | None = None,
    ) -> dict[str, Any]:
        """One /v1/completions request. Without ``stop``, ``ignore_eos`` so every request generates
        ``max_tokens``; with it, generation ends at the first stop string (a chat turn's end)."""
        body: dict[str, Any] = {
            "model": model,
            "prompt": prompt,
            "max_tokens": max_tokens,
            "temperature": temperature,
            "ignore_eos": stop is None,
            "seed": 0,
        }
        if stop is not None:
            body["stop"] = stop
        req = urllib.request.Request(
            self.base_url + "/v1/completions",
            data=json.dumps(body).encode(),
            headers={"content-type": "application/json"},
        )
        with urllib.request.urlopen(req, timeout=timeout_s) as resp:
            return dict(json.loads(resp.read()))


@contextlib.contextmanager
def running(plan: ServerPlan, log_path: Path, *, port: int, timeout_s: float = 600.0) -> Iterator[VllmServer]:
    server = VllmServer(plan, log_path, port=port).start()
    try:
        server.wait_ready(timeout_s)
        yield server
    finally:
        server.stop()


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
