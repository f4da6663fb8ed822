"""The waits and the end of the background loops every worker runs (transfer recovery, the sequence check, the
reservation sweeper, the webhook dispatcher, the projector): wait for an event with a timeout, cancel a task and
wait until it has stopped.

Timeouts use `asyncio.timeout()`, never `asyncio.wait_for()`: Python 3.11's wait_for returns normally when a
cancellation comes as the awaited thing completes, and a loop that swallows its cancellation never stops."""

from __future__ import annotations

import asyncio
from typing import Any


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
