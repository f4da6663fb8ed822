"""Pre-encoded Redis commands for the hot paths: RESP packing, one command, and a one-write pipeline of them.

Against a Redis reached over TCP the commands go through RawConnection, a small RESP client of this module
(asyncio protocol + hiredis.Reader, both public APIs): redis-py costs about 20 µs more per command in its
generic packing, pool bookkeeping, per-command timers and check before reuse. A worker keeps ONE such
connection per client and pipelines every command of the loop on it: the commands of one pass of the loop go
out in one write, so Redis reads and answers many requests per system call instead of one. Any other client
(fakeredis, a UNIX socket, TLS) is driven through redis-py's public connection API instead.

Money safety, on both paths: nothing is ever sent twice. A connection that failed in any way (closed, timed
out, unparseable bytes) is dropped, and the outcome of every command waiting on it is unknown to its caller,
who gets redis-py's ConnectionError or TimeoutError (503; the client retries with its Idempotency-Key). An
error reply (NOSCRIPT among them) is an answer: the connection is kept.
"""

from __future__ import annotations

import asyncio
import time
import weakref
from collections import deque
from collections.abc import Sequence
from typing import Any

import hiredis
from redis import exceptions as redis_errors
from redis.asyncio import Connection as RedisPyTcpConnection
from redis.asyncio import Redis
from redis.asyncio.connection import AbstractConnection, ConnectionPool
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

CHECK_EVERY_SECONDS = 0.25


def pack(command: Sequence[str]) -> bytes:
    """One command in RESP, an array of bulk strings (UTF-8), by hiredis's packer: about half the time of
    building it in Python, a fifth of redis-py's generic packer."""
    # (hiredis's stub types its argument as a 1-tuple and leaves the result untyped)
    packed: bytes = hiredis.pack_command(tuple(command))  # type: ignore[arg-type]
    return packed


# ---- error replies ---------------------------------------------------------------------------------------

# An error reply's first word -> the redis.exceptions class redis-py raises for it (the same table as
# redis-py's parser; a code not here is a plain ResponseError). As in redis-py, a mapped error's message is
# the text after the code, and the code is its status_code.
ERROR_CLASSES: dict[str, type[redis_errors.RedisError]] = {
    "OOM": redis_errors.OutOfMemoryError,
    "WRONGPASS": redis_errors.AuthenticationError,
    "EXECABORT": redis_errors.ExecAbortError,
    "LOADING": redis_errors.BusyLoadingError,
    "NOSCRIPT": redis_errors.NoScriptError,
    "READONLY": redis_errors.ReadOnlyError,
    "NOAUTH": redis_errors.AuthenticationError,
    "NOPERM": redis_errors.NoPermissionError,
    "ASK": redis_errors.AskError,
    "TRYAGAIN": redis_errors.TryAgainError,
    "MOVED": redis_errors.MovedError,
    "CLUSTERDOWN": redis_errors.ClusterDownError,
    "CROSSSLOT": redis_errors.ClusterCrossSlotError,
    "MASTERDOWN": redis_errors.MasterDownError,
}
# The error reply of an FCALL whose function is not loaded: it did not run, as for NOSCRIPT, and is raised as
# NoScriptError too (redis-py's parser makes it a plain ResponseError: missing_function() maps its replies).
FUNCTION_NOT_FOUND = "Function not found"
ERR_CLASSES: dict[str, type[redis_errors.RedisError]] = {
    "max number of clients reached": redis_errors.ConnectionError,
    "invalid password": redis_errors.AuthenticationError,
    FUNCTION_NOT_FOUND: redis_errors.NoScriptError,
}


def missing_function(reply: Any) -> Any:
    """A reply of redis-py: its error for a function that is not loaded as NoScriptError, anything else as it is."""
    if type(reply) is ResponseError and str(reply) == FUNCTION_NOT_FOUND:
        return redis_errors.NoScriptError(FUNCTION_NOT_FOUND)
    return reply


def reply_error(message: str) -> redis_errors.RedisError:
    """The exception for one error reply (hiredis calls this for every error, nested ones too)."""
    code = message.split(" ", 1)[0]
    found = ERROR_CLASSES.get(code)
    if found is None and code == "ERR":
        found = ERR_CLASSES.get(message[4:])
    if found is None:
        return ResponseError(message)
    return found(message[len(code) + 1 :], status_code=code)


# ---- the RESP connection ---------------------------------------------------------------------------------


class _Waiting:
    """One command (or one pipeline of them) written on a connection and waiting for its replies."""

    __slots__ = ("future", "expected", "replies", "since")

    def __init__(self, future: asyncio.Future[list[Any]], expected: int, since: float | None) -> None:
        self.future = future
        self.expected = expected
        self.replies: list[Any] = []
        self.since = since


class RawConnection(asyncio.Protocol):
    """One TCP connection to Redis, shared by every command of its event loop: pipelined.

    Commands written in one pass of the loop go out in one write (Redis then reads them with one system call
    and answers them with one), and replies come back in the order the commands were written: each waiting
    command takes the next `expected` replies. A command whose caller stopped waiting (cancelled) keeps its
    place, so the replies after it still reach their own commands. Bytes that arrive while no command waits
    are marked stray: the connection is then not reused. Timeouts: the loop's watchdog aborts a connection
    whose oldest command has waited longer than `timeout` (checked every CHECK_EVERY_SECONDS: a timeout fires
    between `timeout` and `timeout` + 0.25 s), instead of a timer per command; every command waiting on a
    failed connection fails with it (its outcome unknown), and none is ever written again.
    """

    def __init__(self, address: str, timeout: float | None, encoding: str | None, errors: str) -> None:
        self.address = address
        self.timeout = timeout
        if encoding is None:
            self.reader = hiredis.Reader(replyError=reply_error)
        else:
            self.reader = hiredis.Reader(replyError=reply_error, encoding=encoding, errors=errors)
        self.transport: asyncio.Transport | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.waiting: deque[_Waiting] = deque()
        self.outgoing: list[bytes] = []  # written at the end of this pass of the loop
        self.failure: redis_errors.RedisError | None = None  # once set, the connection is never used again
        self.stray = False

    # -- asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.reader.feed(data)
        waiting = self.waiting
        try:
            while waiting:
                head = waiting[0]
                while len(head.replies) < head.expected:
                    reply = self.reader.gets()
                    if reply is False:
                        return
                    head.replies.append(reply)
                waiting.popleft()
                if not head.future.done():  # else its caller stopped waiting: the replies are dropped
                    head.future.set_result(head.replies)
        except hiredis.ProtocolError as exc:
            self.fail(RedisConnectionError(f"Protocol error from {self.address}: {exc}"))
            return
        if self.reader.has_data():
            self.stray = True  # more than was asked for: answer the commands, then drop the connection

    def connection_lost(self, exc: Exception | None) -> None:
        if self.failure is None:
            self.failure = RedisConnectionError(f"Connection closed by server ({self.address}).")
        self.fail(self.failure)

    # -- use

    def usable(self) -> bool:
        """The check before use: not failed (closing sets a failure first: close(), fail(), connection_lost()),
        nothing unasked-for received, on the running loop."""
        return self.failure is None and not self.stray and self.loop is asyncio.get_running_loop()

    async def execute(self, packed: bytes, replies: int) -> list[Any]:
        """Write `packed` (holding `replies` commands) behind the commands already written, and wait for that
        many replies."""
        if self.failure is not None:
            raise self.failure
        assert self.transport is not None and self.loop is not None
        waiting = _Waiting(self.loop.create_future(), replies, time.monotonic() if self.timeout else None)
        self.waiting.append(waiting)
        if not self.outgoing:
            self.loop.call_soon(self._flush)
        self.outgoing.append(packed)
        return await waiting.future

    def _flush(self) -> None:
        outgoing, self.outgoing = self.outgoing, []
        if self.failure is None and self.transport is not None and not self.transport.is_closing():
            self.transport.write(outgoing[0] if len(outgoing) == 1 else b"".join(outgoing))

    def fail(self, error: redis_errors.RedisError) -> None:
        """Unusable from now on: every waiting command gets `error`, the socket is closed."""
        if self.failure is None:
            self.failure = error
        waiting, self.waiting = self.waiting, deque()
        for w in waiting:
            if not w.future.done():
                w.future.set_exception(error)
        if self.transport is not None and not self.transport.is_closing():
            self.transport.abort()

    def abort_if_stalled(self, now: float) -> None:
        since = self.waiting[0].since if self.waiting else None
        if since is not None and self.timeout is not None and now - since > self.timeout:
            self.fail(RedisTimeoutError(f"Timeout reading from {self.address}"))

    def close(self) -> None:
        if self.failure is None:
            self.failure = RedisConnectionError("Connection closed by the client.")
        self.fail(self.failure)
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()


async def open_connection(settings: dict[str, Any]) -> RawConnection:
    """A RawConnection set up as redis-py would set up its own from the same connection_kwargs: connected within
    socket_connect_timeout, then AUTH and SELECT when configured."""
    host, port = settings.get("host", "localhost"), int(settings.get("port", 6379))
    timeout = settings.get("socket_timeout")
    connect_timeout = settings.get("socket_connect_timeout") or timeout
    address = f"{host}:{port}"
    encoding = settings.get("encoding", "utf-8") if settings.get("decode_responses") else None
    loop = asyncio.get_running_loop()

    def protocol() -> RawConnection:
        return RawConnection(address, timeout, encoding, settings.get("encoding_errors", "strict"))

    try:
        async with asyncio.timeout(connect_timeout):
            _, connection = await loop.create_connection(protocol, host, port)
    except TimeoutError:
        raise RedisTimeoutError(f"Timeout connecting to {address}") from None
    except OSError as exc:
        raise RedisConnectionError(f"Error connecting to {address}: {exc}") from exc
    connection.loop = loop
    if timeout:
        _watchdog(loop).connections.add(connection)
    setup: list[Sequence[str]] = []
    password, username = settings.get("password"), settings.get("username")
    if password:
        setup.append(["AUTH", username, password] if username else ["AUTH", password])
    if int(settings.get("db") or 0):
        setup.append(["SELECT", str(settings["db"])])
    try:
        for command in setup:
            (reply,) = await connection.execute(pack(command), 1)
            if isinstance(reply, Exception):
                raise reply
    except BaseException:
        connection.close()
        raise
    return connection


class _Watchdog:
    """One per event loop: aborts connections that waited too long for a reply, a few times a second."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        # No reference to the loop: it is the key of _watchdogs, which would then never let it go.
        self.connections: weakref.WeakSet[RawConnection] = weakref.WeakSet()
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


# ---- lanes: where a client's hot-path connections wait between commands ----------------------------------


class _RawLane:
    """The hot path's RawConnection for one redis-py client, made from its pool's connection settings: one
    connection, pipelined, shared by every command of the loop; replaced (never re-sending anything) once it
    failed or received bytes nobody asked for."""

    def __init__(self, pool: ConnectionPool) -> None:
        self.settings = dict(pool.connection_kwargs)
        self.connection: RawConnection | None = None
        self.opening: asyncio.Future[RawConnection] | None = None

    async def _connection(self) -> RawConnection:
        connection = self.connection
        if connection is not None and connection.usable():
            return connection
        if self.opening is None or self.opening.get_loop() is not asyncio.get_running_loop():
            self.opening = asyncio.ensure_future(open_connection(self.settings))
        opening = self.opening
        try:
            connection = await asyncio.shield(opening)
        finally:
            if self.opening is opening and opening.done():
                self.opening = None
        if self.connection is not connection:
            if self.connection is not None and self.connection.failure is None and not self.connection.waiting:
                self.connection.close()  # stray bytes, or another loop's: nothing waits on it
            self.connection = connection
        return connection

    async def execute(self, packed: bytes, replies: int) -> list[Any]:
        connection = await self._connection()
        return await connection.execute(packed, replies)

    def close(self) -> None:
        connection, self.connection = self.connection, None
        if connection is not None:
            connection.close()


class _RedisPyLane:
    """The same for clients that are not plain TCP (fakeredis, UNIX sockets, TLS), through redis-py's public
    connection API: connections taken from its pool, checked before reuse as the pool checks its own, and
    returned to it disconnected when they fail."""

    def __init__(self, pool: ConnectionPool) -> None:
        self.pool = pool
        self.idle: list[AbstractConnection] = []

    async def execute(self, packed: bytes, replies: int) -> list[Any]:
        connection = await self._take()
        try:
            await connection.send_packed_command(packed)
            answers: list[Any] = []
            for _ in range(replies):
                try:
                    answers.append(await connection.read_response())
                except ResponseError as exc:
                    answers.append(missing_function(exc))
        except BaseException:
            await self._drop(connection)
            raise
        self.idle.append(connection)
        return answers

    async def _take(self) -> AbstractConnection:
        if not self.idle:
            connection: AbstractConnection = await self.pool.get_connection()  # type: ignore[no-untyped-call]
            return connection
        connection = self.idle.pop()
        try:
            if not await self._ready(connection):  # closed by the server, or stray bytes: a new socket
                await connection.disconnect()
                await connection.connect()  # type: ignore[no-untyped-call]
        except BaseException:
            await self._drop(connection)
            raise
        return connection

    @staticmethod
    async def _ready(connection: AbstractConnection) -> bool:
        if not connection.is_connected:
            return False
        try:
            return not await connection.can_read_destructive()  # type: ignore[no-untyped-call]
        except (RedisConnectionError, RedisTimeoutError, OSError):
            return False

    async def _drop(self, connection: AbstractConnection) -> None:
        try:
            await connection.disconnect()
        finally:
            await self.pool.release(connection)

    def close(self) -> None:
        self.idle.clear()  # the pool owns these connections and closes them with the client


_Lane = _RawLane | _RedisPyLane
_lanes: weakref.WeakKeyDictionary[ConnectionPool, _Lane] = weakref.WeakKeyDictionary()


def _lane(redis: Redis) -> _Lane:
    pool = redis.connection_pool
    lane = _lanes.get(pool)
    if lane is None:
        # Exactly redis-py's TCP connection class: a subclass or another class may connect differently.
        raw = pool.connection_class is RedisPyTcpConnection
        lane = _lanes[pool] = _RawLane(pool) if raw else _RedisPyLane(pool)
    return lane


def close(redis: Redis) -> None:
    """Close the hot path's idle connections of this client (call before or after redis.aclose())."""
    lane = _lanes.pop(redis.connection_pool, None)
    if lane is not None:
        lane.close()


def _raise_error_reply(replies: list[Any]) -> Any:
    (reply,) = replies
    if isinstance(reply, ResponseError):
        raise reply
    if isinstance(reply, RedisConnectionError):  # e.g. "max number of clients reached", as redis-py raises it
        raise reply
    return reply


async def command(redis: Redis, packed: bytes) -> Any:
    """Send one packed command and read its reply. An error reply raises its exception (NoScriptError for
    NOSCRIPT) and keeps the connection; a connection failure drops it. Nothing is retried."""
    return _raise_error_reply(await _lane(redis).execute(packed, 1))


async def pipeline(redis: Redis, commands: Sequence[bytes]) -> list[Any]:
    """Send every packed command in one write on one connection and read every reply, in order.

    An error reply is returned as its exception (like redis-py's pipeline with raise_on_error=False);
    a connection failure raises and drops the connection. Nothing is retried here: the caller knows which
    commands are safe to send again.
    """
    if not commands:
        return []  # nothing would ever answer
    return await _lane(redis).execute(b"".join(commands), len(commands))
