"""One reconcile at a time per job, and at most one more after it: a work queue's de-duplication.

Why: every child a job's reconcile creates comes back as a watch event of that job. Handlers that
waited for the job's lock held their watch events meanwhile (in a burst of 1000 jobs, thousands of
decoded objects: the operator's memory high-water mark) and then each ran a reconcile of its own that
found nothing to do. Here a call for a job whose reconcile is running only records that the job
changed and returns; when the running reconcile ends, the job is reconciled once more, from the
newest state, however many calls came in between.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

K = TypeVar("K")


class Coalescer(Generic[K]):
    def __init__(self) -> None:
        self.running: set[K] = set()
        self.again: dict[K, str] = {}

    async def run(self, key: K, trigger: str, once: Callable[[str, bool], Awaitable[bool]]) -> None:
        """``await once(trigger, first)`` now, then again while calls came in during it (with the newest
        call's trigger and ``first`` False); ``once`` returns False to stop (the job is gone). A call for
        a key already running returns at once."""
        if key in self.running:
            self.again[key] = trigger
            return
        self.running.add(key)
        first = True
        try:
            while await once(trigger, first) and key in self.again:
                trigger, first = self.again.pop(key), False
        finally:
            self.running.discard(key)
            self.again.pop(key, None)
