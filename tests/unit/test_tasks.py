"""The background loops' waits: a cancellation that comes in the same loop round as the awaited event still stops
the loop (Python 3.11's asyncio.wait_for swallows it, and the loop then runs on until its next timeout)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import billing
from billing.infra.tasks import cancel_and_wait, wait_event


async def test_a_cancel_that_comes_with_the_event_stops_the_loop() -> None:
    for _ in range(20):
        event = asyncio.Event()
        rounds = 0

        async def loop(event: asyncio.Event = event) -> None:
            nonlocal rounds
            while True:
                await wait_event(event, 60)
                event.clear()
                rounds += 1

        task = asyncio.create_task(loop())
        await asyncio.sleep(0)  # the loop now waits on the event
        event.set()
        task.cancel()  # in the same round as the set: the wait completes and the cancel comes at once
        done, _ = await asyncio.wait({task}, timeout=5)
        assert done and task.cancelled(), "the cancellation was swallowed: the loop went on waiting"
        assert rounds == 0


async def test_wait_event_says_whether_the_event_came() -> None:
    event = asyncio.Event()
    assert await wait_event(event, 0.01) is False
    asyncio.get_running_loop().call_soon(event.set)
    assert await wait_event(event, 5) is True
    assert await wait_event(event, 0) is True  # already set: at once


async def test_cancel_and_wait_ends_a_task_and_takes_none() -> None:
    await cancel_and_wait(None)
    task = asyncio.create_task(asyncio.sleep(60))
    await asyncio.sleep(0)
    await cancel_and_wait(task)
    assert task.cancelled()


def test_the_service_never_uses_wait_for() -> None:
    root = Path(billing.__file__).parent
    users = [str(p.relative_to(root)) for p in root.rglob("*.py") if "asyncio.wait_for(" in p.read_text()]
    assert users == ["infra/tasks.py"], "use asyncio.timeout() or wait_event(): see billing/infra/tasks.py"


async def test_cancel_and_wait_lets_a_cancel_of_its_caller_through() -> None:
    async def slow_to_stop() -> None:
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            await asyncio.sleep(0.2)  # its clean-up takes a while
            raise

    task = asyncio.create_task(slow_to_stop())
    await asyncio.sleep(0)
    caller = asyncio.create_task(cancel_and_wait(task))
    await asyncio.sleep(0.05)  # the caller now waits for the task's clean-up
    caller.cancel()
    done, _ = await asyncio.wait({caller}, timeout=5)
    assert done and caller.cancelled(), "cancel_and_wait swallowed its own caller's cancellation"
    assert task.done()
