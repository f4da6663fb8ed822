"""The hot path's Redis client (billing/infra/redis_raw.py): the same replies and errors as redis-py, connections
checked before reuse and dropped on any failure, and a command whose reply was lost never sent again."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import pytest
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from billing.infra import redis_raw
from billing.infra.redis_raw import RawConnection, missing_function, pack
from tests.support.proxy import ReplyDroppingProxy
from tests.support.servers import RedisServer

COUNT_SCRIPT = "return redis.call('INCR', KEYS[1])"


@pytest.fixture
async def real(redis_server: RedisServer) -> AsyncIterator[Redis]:
    client = Redis.from_url(redis_server.url)
    yield client
    redis_raw.close(client)
    await client.aclose()


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, Exception) or isinstance(b, Exception):
        return (
            type(a) is type(b)
            and str(a) == str(b)
            and getattr(a, "status_code", None) == getattr(b, "status_code", None)
        )
    return bool(a == b)


async def _both(client: Redis, *args: str) -> tuple[Any, Any]:
    """(redis_raw's answer, redis-py's connection's answer) to one command, an error reply as its exception."""
    try:
        raw = await redis_raw.command(client, pack(list(args)))
    except ResponseError as exc:
        raw = exc
    connection = await client.connection_pool.get_connection()  # type: ignore[no-untyped-call]
    try:
        await connection.send_command(*args)
        try:
            reference = await connection.read_response()
        except ResponseError as exc:
            reference = exc
    finally:
        await client.connection_pool.release(connection)
    return raw, reference


async def test_replies_and_error_replies_are_redis_pys(redis_client: Redis) -> None:
    sha = await redis_client.script_load(COUNT_SCRIPT)
    await redis_client.hset("h", mapping={"available": "100", "reserved": "0"})
    commands = [
        ["HMGET", "h", "available", "reserved", "missing"],
        ["HMGET", "nothing", "available"],
        ["SET", "s", "ünïcode"],
        ["GET", "s"],
        ["EVALSHA", sha, "1", "counter"],
        ["EVAL", "return {1, 'two', {3}, false}", "0"],
        ["EVALSHA", "0" * 40, "0"],  # NOSCRIPT
        ["EVAL", "return redis.error_reply('OOM command not allowed')", "0"],
        ["EVAL", "return redis.error_reply('BUSY is busy')", "0"],
        ["HGET", "s", "x"],  # WRONGTYPE
    ]
    for command in commands:
        raw, reference = await _both(redis_client, *command)
        if command[0] == "EVALSHA" and command[1] == sha:
            reference -= 1  # the counter moved once per send
        assert _same(raw, reference), command
    redis_raw.close(redis_client)


async def test_decoded_replies_are_redis_pys(redis_server: RedisServer) -> None:
    client = Redis.from_url(redis_server.url, decode_responses=True)
    try:
        await client.set("d", "ünïcode")
        raw, reference = await _both(client, "GET", "d")
        assert raw == reference == "ünïcode"
    finally:
        redis_raw.close(client)
        await client.aclose()


async def test_a_pipeline_answers_in_order_with_error_replies_in_place(redis_client: Redis) -> None:
    replies = await redis_raw.pipeline(
        redis_client,
        [pack(["SET", "p", "1"]), pack(["EVALSHA", "0" * 40, "0"]), pack(["INCR", "p"]), pack(["GET", "p"])],
    )
    assert replies[0] == b"OK" and isinstance(replies[1], NoScriptError) and replies[2:] == [2, b"2"]
    assert await redis_raw.pipeline(redis_client, []) == []
    redis_raw.close(redis_client)


async def test_a_missing_function_did_not_run_on_either_client(redis_client: Redis) -> None:
    """An FCALL of a function that is not loaded did not run: NoScriptError, as for NOSCRIPT, from redis_raw and,
    through missing_function(), from redis-py's replies (the cluster route, the waiting pipeline)."""
    command = ["FCALL", "no_such_function", "0"]
    with pytest.raises(NoScriptError):
        await redis_raw.command(redis_client, pack(command))
    (reply,) = await redis_raw.pipeline(redis_client, [pack(command)])
    assert isinstance(reply, NoScriptError)
    with pytest.raises(ResponseError) as raised:
        await redis_client.execute_command(*command)
    assert isinstance(missing_function(raised.value), NoScriptError)
    other = ResponseError("Function not loaded here")  # any other error stays as it is
    assert missing_function(other) is other
    redis_raw.close(redis_client)


async def test_an_error_reply_keeps_the_connection(real: Redis) -> None:
    before = await redis_raw.command(real, pack(["CLIENT", "ID"]))
    with pytest.raises(NoScriptError):
        await redis_raw.command(real, pack(["EVALSHA", "0" * 40, "0"]))
    assert await redis_raw.command(real, pack(["CLIENT", "ID"])) == before


async def test_the_database_of_the_url_is_selected(redis_server: RedisServer) -> None:
    client = Redis.from_url(redis_server.url.rsplit("/", 1)[0] + "/3")
    try:
        assert await redis_raw.command(client, pack(["SET", "in-db-3", "yes"])) == b"OK"
        assert await client.get("in-db-3") == b"yes"
    finally:
        redis_raw.close(client)
        await client.aclose()
    other = Redis.from_url(redis_server.url)
    try:
        assert await other.get("in-db-3") is None
    finally:
        await other.aclose()


async def test_a_password_is_sent_before_any_command() -> None:
    server = RedisServer().start()
    admin = Redis.from_url(server.url)
    try:
        await admin.config_set("requirepass", "sesame")
        client = Redis.from_url(f"redis://:sesame@127.0.0.1:{server.port}/0")
        try:
            assert await redis_raw.command(client, pack(["PING"])) == b"PONG"
        finally:
            redis_raw.close(client)
            await client.aclose()
        wrong = Redis.from_url(f"redis://:wrong@127.0.0.1:{server.port}/0")
        try:
            with pytest.raises(RedisConnectionError):  # AuthenticationError: 503, as redis-py's
                await redis_raw.command(wrong, pack(["PING"]))
        finally:
            redis_raw.close(wrong)
            await wrong.aclose()
    finally:
        with contextlib.suppress(Exception):
            await admin.aclose()
        server.stop()


async def test_a_lost_reply_after_evalsha_is_an_error_and_the_script_ran_once(redis_server: RedisServer) -> None:
    proxy = await ReplyDroppingProxy(redis_server.port).start()
    client = Redis.from_url(proxy.url)
    direct = Redis.from_url(redis_server.url)
    try:
        sha = await direct.script_load(COUNT_SCRIPT)
        await direct.delete("lost")
        before = await redis_raw.command(client, pack(["CLIENT", "ID"]))
        proxy.arm(b"EVALSHA")
        with pytest.raises(RedisConnectionError):
            await redis_raw.command(client, pack(["EVALSHA", sha, "1", "lost"]))
        assert proxy.dropped == 1
        assert await direct.get("lost") == b"1"  # ran once, never sent again
        assert await redis_raw.command(client, pack(["CLIENT", "ID"])) != before  # a new connection

        proxy.arm(b"EVALSHA")
        with pytest.raises(RedisConnectionError):
            await redis_raw.pipeline(client, [pack(["EVALSHA", sha, "1", "lost"]), pack(["GET", "lost"])])
        assert await direct.get("lost") == b"2"
    finally:
        redis_raw.close(client)
        await client.aclose()
        await direct.aclose()
        await proxy.close()


async def test_a_cancelled_command_keeps_its_place_and_the_next_reads_its_own_reply(real: Redis) -> None:
    before = await redis_raw.command(real, pack(["CLIENT", "ID"]))
    waiting = asyncio.ensure_future(redis_raw.command(real, pack(["BLPOP", "never-pushed", "0.3"])))
    await asyncio.sleep(0.05)
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    # Its reply (nil) arrives later on the same connection: the next command must not read it as its own.
    assert await redis_raw.command(real, pack(["CLIENT", "ID"])) == before
    assert await redis_raw.command(real, pack(["ECHO", "mine"])) == b"mine"


async def test_commands_of_one_pass_go_out_in_one_write_and_each_gets_its_replies(real: Redis) -> None:
    await real.delete("counted")
    answers = await asyncio.gather(
        redis_raw.command(real, pack(["INCR", "counted"])),
        redis_raw.pipeline(real, [pack(["INCR", "counted"]), pack(["GET", "nothing"])]),
        redis_raw.command(real, pack(["ECHO", "third"])),
        redis_raw.command(real, pack(["CLIENT", "ID"])),
        redis_raw.command(real, pack(["CLIENT", "ID"])),
    )
    assert answers[:3] == [1, [2, None], b"third"]
    assert answers[3] == answers[4]  # one connection serves them all


class _Transport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.written: list[bytes] = []
        self.aborted = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.written.append(bytes(data))

    def is_closing(self) -> bool:
        return self.aborted

    def abort(self) -> None:
        self.aborted = True

    def close(self) -> None:
        self.aborted = True


def _connection() -> tuple[RawConnection, _Transport]:
    connection = RawConnection("test:0", None, None, "strict")
    transport = _Transport()
    connection.connection_made(transport)
    connection.loop = asyncio.get_running_loop()
    return connection, transport


async def test_bytes_nobody_asked_for_make_a_connection_unusable() -> None:
    connection, _ = _connection()
    assert connection.usable()
    connection.data_received(b"+OK\r\n")
    assert not connection.usable()

    connection, _ = _connection()
    answer = asyncio.ensure_future(connection.execute(b"*1\r\n$4\r\nPING\r\n", 1))
    await asyncio.sleep(0)
    connection.data_received(b"+PONG\r\n+EXTRA\r\n")  # one more reply than was asked for
    assert await answer == [b"PONG"]
    assert not connection.usable()


async def test_a_half_read_reply_is_waited_for_and_a_garbled_one_fails() -> None:
    connection, _ = _connection()
    answer = asyncio.ensure_future(connection.execute(b"...", 2))
    await asyncio.sleep(0)
    connection.data_received(b"$5\r\nhel")
    connection.data_received(b"lo\r\n:4")
    assert not answer.done()
    connection.data_received(b"2\r\n")
    assert await answer == [b"hello", 42]
    assert connection.usable()

    answer = asyncio.ensure_future(connection.execute(b"...", 1))
    await asyncio.sleep(0)
    connection.data_received(b"?garbage\r\n")
    with pytest.raises(RedisConnectionError):
        await answer
    assert not connection.usable()
    with pytest.raises(RedisConnectionError):  # never written on again
        await connection.execute(b"...", 1)


async def test_a_connection_closed_while_waiting_fails_its_command() -> None:
    connection, transport = _connection()
    answer = asyncio.ensure_future(connection.execute(b"...", 1))
    await asyncio.sleep(0)
    connection.connection_lost(None)
    with pytest.raises(RedisConnectionError):
        await answer
    assert not connection.usable() and transport.aborted


async def test_one_write_per_pass_replies_in_order_and_a_failure_fails_every_waiting_command() -> None:
    connection, transport = _connection()
    first = asyncio.ensure_future(connection.execute(b"A", 1))
    second = asyncio.ensure_future(connection.execute(b"BC", 2))
    cancelled = asyncio.ensure_future(connection.execute(b"D", 1))
    last = asyncio.ensure_future(connection.execute(b"E", 1))
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert transport.written == [b"ABCDE"]  # one write for the whole pass
    cancelled.cancel()
    connection.data_received(b":1\r\n:2\r\n")
    assert await first == [1]
    assert not second.done()
    connection.data_received(b":3\r\n$4\r\nskip\r\n")  # the cancelled command's reply is nobody's
    assert await second == [2, 3]
    assert not last.done()
    behind = asyncio.ensure_future(connection.execute(b"F", 1))
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert transport.written == [b"ABCDE", b"F"]
    connection.connection_lost(None)
    for waiting in (last, behind):  # their outcome is unknown: both fail, neither is written again
        with pytest.raises(RedisConnectionError):
            await waiting
    assert not connection.usable() and transport.written == [b"ABCDE", b"F"]


async def test_the_watchdog_times_out_the_oldest_command_and_fails_the_connection() -> None:
    connection = RawConnection("test:0", 0.5, None, "strict")
    transport = _Transport()
    connection.connection_made(transport)
    connection.loop = asyncio.get_running_loop()
    old = asyncio.ensure_future(connection.execute(b"A", 1))
    await asyncio.sleep(0)
    connection.abort_if_stalled(connection.waiting[0].since + 0.4)  # not yet
    assert not old.done()
    newer = asyncio.ensure_future(connection.execute(b"B", 1))
    await asyncio.sleep(0)
    connection.abort_if_stalled(connection.waiting[0].since + 0.6)
    for waiting in (old, newer):
        with pytest.raises(RedisTimeoutError):
            await waiting
    assert transport.aborted


def test_pack_is_resp_with_lengths_in_utf8_bytes() -> None:
    assert pack(["SET", "k", "привет"]) == b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$12\r\n" + "привет".encode() + b"\r\n"
    assert pack(["ECHO", ""]) == b"*2\r\n$4\r\nECHO\r\n$0\r\n\r\n"
