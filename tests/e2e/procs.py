"""Which processes are still alive in a process group (read from /proc: no psutil needed)."""

from __future__ import annotations

import time
from pathlib import Path


def members(pgid: int) -> list[int]:
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        # After "pid (comm)": state ppid pgrp ...; zombies are already dead.
        if int(fields[2]) == pgid and fields[0] != "Z":
            out.append(int(stat.parent.name))
    return out


def wait_gone(pgid: int, timeout_s: float = 15.0) -> list[int]:
    """Members of the group still alive after up to ``timeout_s`` (SIGKILLed processes take a moment to go)."""
    deadline = time.monotonic() + timeout_s
    while (alive := members(pgid)) and time.monotonic() < deadline:
        time.sleep(0.2)
    return alive
