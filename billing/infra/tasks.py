"""The end of the background loops every worker runs (transfer recovery, the sequence check, the reservation
sweeper, the webhook dispatcher): cancel a task and wait until it has stopped."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any


async def cancel_and_wait(task: asyncio.Task[Any] | None) -> None:
    """Cancel the task (None: nothing runs) and wait for it, its CancelledError swallowed: the caller stops it."""
    if task is None:
        return
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
