"""The per-job work queue's de-duplication (coalesce.py): calls during a running reconcile return at
once and add exactly one more reconcile, with the newest trigger; other jobs run concurrently."""

from __future__ import annotations

import asyncio

from mtp_operator.coalesce import Coalescer


def test_calls_during_a_reconcile_add_one_more_and_return_at_once() -> None:
    async def main() -> None:
        c: Coalescer[str] = Coalescer()
        calls: list[tuple[str, str, bool]] = []
        gate = asyncio.Event()

        def once_for(key: str):  # type: ignore[no-untyped-def]
            async def once(trigger: str, first: bool) -> bool:
                calls.append((key, trigger, first))
                if key == "a" and first:
                    await gate.wait()
                return True

            return once

        first = asyncio.create_task(c.run("a", "event", once_for("a")))
        await asyncio.sleep(0)
        assert calls == [("a", "event", True)]
        for trigger in ("child", "child", "timer"):  # each returns at once: nothing waits on the lock
            await asyncio.wait_for(c.run("a", trigger, once_for("a")), timeout=1)
        await asyncio.wait_for(c.run("b", "event", once_for("b")), timeout=1)  # another job is not held up
        gate.set()
        await first
        assert calls == [("a", "event", True), ("b", "event", True), ("a", "timer", False)]
        assert not c.running and not c.again

    asyncio.run(main())


def test_a_job_gone_meanwhile_stops_and_an_error_leaves_nothing_pending() -> None:
    async def main() -> None:
        c: Coalescer[str] = Coalescer()
        seen: list[bool] = []
        gate = asyncio.Event()

        async def gone(trigger: str, first: bool) -> bool:
            seen.append(first)
            if first:
                await gate.wait()
                return False  # e.g. the job was deleted: no second run even though a call came in
            return True

        task = asyncio.create_task(c.run("a", "event", gone))
        await asyncio.sleep(0)
        await c.run("a", "child", gone)
        gate.set()
        await task
        assert seen == [True] and not c.again

        async def boom(trigger: str, first: bool) -> bool:
            raise RuntimeError("api down")

        try:
            await c.run("a", "event", boom)
        except RuntimeError:
            pass
        assert not c.running and not c.again  # the next event or resync reconciles it afresh

    asyncio.run(main())
