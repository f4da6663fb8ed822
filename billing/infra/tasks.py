"""The start, waits and end of the background loops every worker runs (transfer recovery, the sequence check, the
reservation sweeper, the webhook dispatcher, the projector, the events waker): start one whose unexpected end is
logged, wait for an event with a timeout, cancel a task and wait until it has stopped.

Timeouts use `asyncio.timeout()`, never `asyncio.wait_for()`: Python 3.11's wait_for returns normally when a
cancellation comes as the awaited thing completes, and a loop that swallows its cancellation never stops."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from typing import Any

log = logging.getLogger("billing.infra.tasks")


def start_loop(loop: Callable[[], Coroutine[Any, Any, None]], name: str) -> asyncio.Task[None]:
    """Run a background loop (`loop()`, called in the task: one cancelled before its first step leaves no
    coroutine never awaited) as a task whose unexpected end is logged at once, as an error. Its owner holds the
    task, so asyncio would report an exception that ends it only once the task is collected, that is never;
    and a CancelledError that comes from inside (a future something else cancelled), not from Task.cancel(),
    would end it without a word."""
    return asyncio.create_task(_logged(loop, name), name=name)


async def _logged(loop: Callable[[], Coroutine[Any, Any, None]], name: str) -> None:
    try:
        await loop()
    except asyncio.CancelledError:
        task = asyncio.current_task()
        if task is not None and not task.cancelling():
            log.error("background loop %r stopped: cancelled from within, not by its owner", name)
        raise
    except Exception as exc:
        log.error("background loop %r stopped: %r", name, exc, exc_info=exc)
        raise


async def cancel_and_wait(task: asyncio.Task[Any] | None) -> None:
    """Cancel the task (None: nothing runs) and wait for it, its CancelledError swallowed: the caller stops it."""
    if task is None:
        return
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        current = asyncio.current_task()
        if current is not None and current.cancelling():
            raise  # the caller itself is being cancelled: not the task's end, which is swallowed


async def wait_event(event: asyncio.Event, timeout: float) -> bool:
    """Wait until the event is set (True) or the timeout passes (False); a cancellation always propagates."""
    if event.is_set():
        return True
    try:
        async with asyncio.timeout(max(0.0, timeout)):
            await event.wait()
    except TimeoutError:
        return event.is_set()  # (set in the very round the timeout fired)
    return True
