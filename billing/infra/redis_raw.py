"""Pre-encoded Redis commands for the hot paths: RESP packing, one command, and a one-write pipeline of them."""

from __future__ import annotations

import weakref
from collections.abc import Sequence
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.connection import AbstractConnection, ConnectionPool
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError


def pack(command: Sequence[str]) -> bytes:
    """One command in RESP, an array of bulk strings, encoded once as a whole (redis-py's generic packer
    costs about 1 µs per argument; this a fifth of it). Lengths are in UTF-8 bytes."""
    parts = [f"*{len(command)}\r\n"]
    for arg in command:
        parts.append(f"${len(arg) if arg.isascii() else len(arg.encode())}\r\n{arg}\r\n")
    return "".join(parts).encode()


class _Lane:
    """Connections the hot path reuses without the pool's lock and bookkeeping (~10 µs a command in redis-py 7).

    Taken from the pool when none is idle here and kept for this process's next commands; each is checked
    before use as the pool checks its own (reconnect when closed, or when bytes are waiting that no command
    asked for); a connection that failed goes back to the pool, disconnected.
    """

    def __init__(self, pool: ConnectionPool) -> None:
        self.pool = pool
        self.idle: list[AbstractConnection] = []

    async def take(self) -> AbstractConnection:
        if not self.idle:
            return await self.pool.get_connection()
        connection = self.idle.pop()
        try:
            if not await self._ready(connection):  # closed by the server, or stray bytes: a new socket
                await connection.disconnect()
                await connection.connect()
        except BaseException:
            await self.drop(connection)
            raise
        return connection

    @staticmethod
    async def _ready(connection: AbstractConnection) -> bool:
        if not connection.is_connected:
            return False
        try:
            return not await connection.can_read_destructive()
        except (RedisConnectionError, RedisTimeoutError, OSError):
            return False

    def keep(self, connection: AbstractConnection) -> None:
        self.idle.append(connection)

    async def drop(self, connection: AbstractConnection) -> None:
        try:
            await connection.disconnect()
        finally:
            await self.pool.release(connection)


_lanes: weakref.WeakKeyDictionary[ConnectionPool, _Lane] = weakref.WeakKeyDictionary()


def _lane(redis: Redis) -> _Lane:
    pool = redis.connection_pool
    lane = _lanes.get(pool)
    if lane is None:
        lane = _lanes[pool] = _Lane(pool)
    return lane


async def command(redis: Redis, packed: bytes) -> Any:
    """Send one packed command and read its reply (redis-py's execute_command without its generic packing,
    retry wrapper and pool bookkeeping). An error reply raises its ResponseError (NoScriptError for
    NOSCRIPT) and keeps the connection; a connection failure drops it. Nothing is retried."""
    lane = _lane(redis)
    connection = await lane.take()
    try:
        await connection.send_packed_command(packed)
        reply = await connection.read_response()
    except ResponseError:
        lane.keep(connection)
        raise
    except BaseException:
        await lane.drop(connection)
        raise
    lane.keep(connection)
    return reply


async def pipeline(redis: Redis, commands: Sequence[bytes]) -> list[Any]:
    """Send every packed command in one write on one connection and read every reply, in order.

    An error reply is returned as its exception (like redis-py's pipeline with raise_on_error=False);
    a connection failure raises and drops the connection. Nothing is retried here: the caller knows which
    commands are safe to send again.
    """
    lane = _lane(redis)
    connection = await lane.take()
    try:
        await connection.send_packed_command(b"".join(commands))
        replies: list[Any] = []
        for _ in commands:
            try:
                replies.append(await connection.read_response())
            except ResponseError as exc:
                replies.append(exc)
    except BaseException:
        await lane.drop(connection)
        raise
    lane.keep(connection)
    return replies
