"""Pre-encoded Redis commands for the hot paths: RESP packing, one command, and a one-write pipeline of them."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import ResponseError


def pack(command: Sequence[str]) -> bytes:
    """One command in RESP, an array of bulk strings, encoded once as a whole (redis-py's generic packer
    costs about 1 µs per argument; this a fifth of it). Lengths are in UTF-8 bytes."""
    parts = [f"*{len(command)}\r\n"]
    for arg in command:
        parts.append(f"${len(arg) if arg.isascii() else len(arg.encode())}\r\n{arg}\r\n")
    return "".join(parts).encode()


async def command(redis: Redis, packed: bytes) -> Any:
    """Send one packed command on a pooled connection and read its reply (redis-py's execute_command without
    its generic packing and retry wrapper: ~15 µs less per call). An error reply raises its ResponseError
    (NoScriptError for NOSCRIPT) and keeps the connection; a connection failure drops it. No retry."""
    pool = redis.connection_pool
    connection = await pool.get_connection()
    try:
        await connection.send_packed_command(packed)
        return await connection.read_response()
    except ResponseError:
        raise
    except BaseException:
        await connection.disconnect()
        raise
    finally:
        await pool.release(connection)


async def pipeline(redis: Redis, commands: Sequence[bytes]) -> list[Any]:
    """Send every packed command in one write on one pooled connection and read every reply, in order.

    An error reply is returned as its exception (like redis-py's pipeline with raise_on_error=False);
    a connection failure raises and drops the connection. Nothing is retried here: the caller knows which
    commands are safe to send again.
    """
    packed = b"".join(commands)
    pool = redis.connection_pool
    connection = await pool.get_connection()
    try:
        await connection.send_packed_command(packed)
        replies: list[Any] = []
        for _ in commands:
            try:
                replies.append(await connection.read_response())
            except ResponseError as exc:
                replies.append(exc)
        return replies
    except BaseException:
        await connection.disconnect()
        raise
    finally:
        await pool.release(connection)
