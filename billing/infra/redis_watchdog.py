"""redis-py connections made cheaper per command: socket timeouts kept by a watchdog, a quick check before reuse."""

from __future__ import annotations

import asyncio
import time
import weakref
from typing import Any

from redis.asyncio import Connection
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

CHECK_EVERY_SECONDS = 0.25


class WatchedConnection(Connection):
    """A redis-py connection whose socket_timeout a per-loop watchdog enforces.

    redis-py wraps every write in asyncio.wait_for (a new task) and every read in asyncio.timeout (a timer).
    Here a send or a read only notes when it started; every CHECK_EVERY_SECONDS the loop's watchdog aborts
    a connection that has waited longer than its timeout, and the caller gets redis TimeoutError, as before
    (redis-py drops the connection from the pool). A timeout fires between timeout and timeout + 0.25 s.
    """

    def __init__(self, *, socket_timeout: float | None = None, **kwargs: Any) -> None:
        kwargs.setdefault("socket_connect_timeout", socket_timeout)
        super().__init__(socket_timeout=None, **kwargs)  # no per-command timer in redis-py
        self.stall_timeout = socket_timeout
        self.waiting_since: float | None = None
        self.stalled = False
        self._watched = False

    async def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        self._begin()
        try:
            await super().send_packed_command(command, check_health)
        except RedisConnectionError:
            self._raise_if_stalled("writing to")
            raise
        finally:
            self.waiting_since = None

    async def read_response(self, *args: Any, **kwargs: Any) -> Any:
        self._begin()
        try:
            return await super().read_response(*args, **kwargs)
        except RedisConnectionError:
            self._raise_if_stalled("reading from")
            raise
        finally:
            self.waiting_since = None

    async def can_read_destructive(self) -> bool:
        """redis-py's check of a pooled connection before reuse, without its extra loop iteration when clean.

        redis-py waits one event-loop iteration for stray bytes (asyncio.timeout(0) around a read: ~14 µs).
        Whatever the loop has received is already in the stream's buffer (or its EOF is): when that buffer
        and the parser's are empty and the stream is open, there is nothing to read. Otherwise, or when
        anything is not as expected, redis-py's own check decides.
        """
        stream = self._reader
        parser = self._parser
        buffered = getattr(stream, "_buffer", None)
        hiredis_reader = getattr(parser, "_reader", None)
        if (
            stream is not None
            and buffered is not None
            and not buffered
            and not stream.at_eof()
            and stream.exception() is None
            and getattr(parser, "_connected", False)
            and hiredis_reader is not None
            and hasattr(hiredis_reader, "has_data")
            and not hiredis_reader.has_data()
        ):
            return False
        return await super().can_read_destructive()

    def _begin(self) -> None:
        if self.stall_timeout:
            self.stalled = False  # only an abort during this send or read makes its error a timeout
            self.waiting_since = time.monotonic()
            if not self._watched:
                _watchdog(asyncio.get_running_loop()).connections.add(self)
                self._watched = True

    def _raise_if_stalled(self, doing: str) -> None:
        if self.stalled:
            self.stalled = False
            raise RedisTimeoutError(f"Timeout {doing} {self._host_error()}") from None

    def abort_if_stalled(self, now: float) -> None:
        since = self.waiting_since
        if since is None or self.stall_timeout is None or now - since <= self.stall_timeout:
            return
        writer = self._writer
        if writer is not None:
            self.stalled = True
            writer.transport.abort()  # the pending read or write fails at once; redis-py disconnects


class _Watchdog:
    """One per event loop: checks its connections a few times a second."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        # No reference to the loop: it is the key of _watchdogs, which would then never let it go.
        self.connections: weakref.WeakSet[WatchedConnection] = weakref.WeakSet()
        loop.call_later(CHECK_EVERY_SECONDS, self.check)

    def check(self) -> None:
        try:
            now = time.monotonic()
            for connection in list(self.connections):
                connection.abort_if_stalled(now)
        finally:  # one failure must not end timeout enforcement for this loop
            asyncio.get_running_loop().call_later(CHECK_EVERY_SECONDS, self.check)


_watchdogs: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Watchdog] = weakref.WeakKeyDictionary()


def _watchdog(loop: asyncio.AbstractEventLoop) -> _Watchdog:
    found = _watchdogs.get(loop)
    if found is None:
        found = _watchdogs[loop] = _Watchdog(loop)
    return found
