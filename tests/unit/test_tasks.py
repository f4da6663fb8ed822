"""The background loops' start and waits: a cancellation that comes in the same loop round as the awaited event
still stops the loop (Python 3.11's asyncio.wait_for swallows it, and the loop then runs on until its next
timeout), and a loop that ends unasked is logged at once."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

import pytest

import billing
from billing.infra.tasks import cancel_and_wait, start_loop, wait_event


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


async def test_a_loop_ended_by_an_exception_or_a_cancel_from_within_is_logged_at_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    inner: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    async def broken() -> None:
        await asyncio.sleep(0)
        raise KeyError("lost")

    async def waits_on_inner() -> None:
        await inner  # cancelled below by someone else, not through the task

    async def stopped_by_owner() -> None:
        await asyncio.sleep(60)

    async def finished() -> None:
        return None

    with caplog.at_level(logging.ERROR, logger="billing.infra.tasks"):
        held = [
            start_loop(broken, "broken loop"),
            start_loop(waits_on_inner, "orphaned loop"),
            start_loop(stopped_by_owner, "stopped loop"),
            start_loop(finished, "done"),
        ]
        await asyncio.sleep(0.01)  # the tasks stay referenced: asyncio itself would say nothing of their ends
        inner.cancel()
        await cancel_and_wait(held[2])
        await asyncio.sleep(0.01)
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert [r.getMessage() for r in errors] == [
        "background loop 'broken loop' stopped: KeyError('lost')",
        "background loop 'orphaned loop' stopped: cancelled from within, not by its owner",
    ]
    assert errors[0].exc_info is not None and errors[0].exc_info[0] is KeyError
    assert all(task.done() for task in held)


def test_every_background_loop_starts_through_start_loop() -> None:
    """So that none can end unnoticed: create_task appears only where a task's end is awaited by its caller."""
    root = Path(billing.__file__).parent
    loops = [
        path.relative_to(root).as_posix()
        for path in root.rglob("*.py")
        if "create_task(self._run()" in path.read_text() or "create_task(self._listen()" in path.read_text()
    ]
    assert loops == []


async def test_a_loop_cancelled_before_its_first_step_leaves_no_coroutine_unawaited() -> None:
    made = 0

    def loop() -> Coroutine[Any, Any, None]:
        nonlocal made
        made += 1  # a coroutine is made only here: one made and never run would warn "never awaited"
        return asyncio.sleep(0)

    task = start_loop(loop, "cancelled at once")
    await cancel_and_wait(task)
    assert task.cancelled() and made == 0
    ran = start_loop(loop, "runs")
    await ran
    assert made == 1
