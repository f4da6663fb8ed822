"""A Redis that cannot serve now (replica, busy script, failed persistence, loading, cluster change) answers
503 unavailable with Retry-After, logged as one warning; a script's own error stays 500."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import threading
from collections.abc import AsyncIterator, Iterator

import pytest
import redis
import tornado.httpserver
from redis.asyncio import Redis

from billing.app import make_app
from billing.bootstrap import Context, bootstrap
from billing.core.config import Settings
from tests.support.api import Api, problem
from tests.support.proxy import ErrorReplyProxy
from tests.support.servers import RedisServer, free_port
from tests.support.state import changed_keys, redis_state

DEPOSIT = {"user_id": 1, "amount": "1.00"}
BATCH = {"operations": [{"op": "deposit", "user_id": 1, "amount": "1.00"}]}


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    """A Redis of this test's own: each test puts it in a state it cannot serve from."""
    server = RedisServer().start()
    yield server
    server.kill()
    shutil.rmtree(server.dir, ignore_errors=True)


@pytest.fixture
def admin(redis_server: RedisServer) -> Iterator[redis.Redis]:
    client = redis.Redis(port=redis_server.port)
    yield client
    client.close()


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return settings.model_copy(update={"projector_enabled": False})


async def serve(ctx: Context) -> tuple[Api, tornado.httpserver.HTTPServer]:
    port = free_port()
    server = tornado.httpserver.HTTPServer(make_app(ctx))
    server.listen(port, "127.0.0.1")
    return Api(f"http://127.0.0.1:{port}"), server


@pytest.fixture
async def live(settings: Settings, redis_server: RedisServer) -> AsyncIterator[tuple[Api, Context]]:
    from mongomock_motor import AsyncMongoMockClient

    client = Redis.from_url(redis_server.url)
    ctx = await bootstrap(settings, redis=client, mongo=AsyncMongoMockClient(tz_aware=True)["billing_unavail"])
    await ctx.start()
    api, server = await serve(ctx)
    assert (await api.deposit(1, "5.00")).status == 201
    yield api, ctx
    api.close()
    server.stop()
    await ctx.stop()
    await client.aclose()


async def assert_unavailable_and_unchanged(
    api: Api, ctx: Context, caplog: pytest.LogCaptureFixture, before: dict | None = None
) -> None:
    """Every write (alone and in a batch) answers 503 with Retry-After and changes nothing; one warning each."""
    check_now = before is None
    if before is None:
        before = await redis_state(ctx.redis, ctx.settings.redis_prefix)
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        r = await api.post("/v1/deposits", DEPOSIT, token="tok-payments", key="k-single")
        problem(r, 503, "unavailable")
        assert r.headers["Retry-After"]
        r = await api.post("/v1/batch", BATCH, token="tok-payments")
        assert r.status in (200, 503), r.body
        if r.status == 200:
            assert [(x["status"], x["body"]["code"]) for x in r.json["results"]] == [(503, "unavailable")]
        else:
            problem(r, 503, "unavailable")
    assert not [rec for rec in caplog.records if rec.levelno >= logging.ERROR or rec.exc_info], caplog.text
    assert any("unavailable" in rec.getMessage() for rec in caplog.records if rec.levelno == logging.WARNING)
    if check_now:
        assert changed_keys(before, await redis_state(ctx.redis, ctx.settings.redis_prefix)) == []


async def test_a_read_only_replica_answers_503(
    live: tuple[Api, Context], admin: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    api, ctx = live
    admin.execute_command("REPLICAOF", "127.0.0.1", str(free_port()))  # a master that never answers: READONLY
    try:
        await assert_unavailable_and_unchanged(api, ctx, caplog)
        assert (await api.balance(1)).json["available"] == "5.00"  # reads still served
    finally:
        admin.execute_command("REPLICAOF", "NO", "ONE")
    assert (await api.deposit(1, "1.00")).status == 201


async def test_a_failed_snapshot_answers_503(
    live: tuple[Api, Context], admin: redis.Redis, redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    api, ctx = live
    shutil.rmtree(redis_server.dir)  # the snapshot cannot be written: with stop-writes-on-bgsave-error, MISCONF
    admin.config_set("stop-writes-on-bgsave-error", "yes")
    admin.config_set("save", "3600 1")  # (writes are refused only while snapshots are configured)
    admin.bgsave()
    while (
        admin.info("persistence")["rdb_bgsave_in_progress"]
        or admin.info("persistence")["rdb_last_bgsave_status"] != "err"
    ):
        await asyncio.sleep(0.02)
    try:
        await assert_unavailable_and_unchanged(api, ctx, caplog)
    finally:
        admin.config_set("stop-writes-on-bgsave-error", "no")
    assert (await api.deposit(1, "1.00")).status == 201


async def test_a_busy_script_answers_503(
    live: tuple[Api, Context], admin: redis.Redis, redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    api, ctx = live
    admin.config_set("busy-reply-threshold", 50)
    before = await redis_state(ctx.redis, ctx.settings.redis_prefix)
    blocker = redis.Redis(port=redis_server.port)
    errors: list[Exception] = []

    def run_forever() -> None:
        try:
            blocker.eval("while true do end", 0)
        except redis.ResponseError as exc:  # ended by SCRIPT KILL
            errors.append(exc)

    thread = threading.Thread(target=run_forever)
    thread.start()
    try:
        while True:  # until other clients get BUSY
            try:
                admin.ping()
            except redis.ResponseError as exc:
                assert str(exc).startswith("BUSY")
                break
            await asyncio.sleep(0.02)
        await assert_unavailable_and_unchanged(api, ctx, caplog, before)
        problem(await api.balance(1), 503, "unavailable")  # reads too
    finally:
        while thread.is_alive():
            with contextlib.suppress(redis.ResponseError):
                admin.script_kill()
            thread.join(0.1)
        blocker.close()
    assert errors
    assert changed_keys(before, await redis_state(ctx.redis, ctx.settings.redis_prefix)) == []
    assert (await api.deposit(1, "1.00")).status == 201


@pytest.mark.parametrize(
    "error",
    [
        b"LOADING Redis is loading the dataset in memory",
        b"TRYAGAIN Multiple keys request during rehashing of slot",
        b"CLUSTERDOWN The cluster is down",
        b"MASTERDOWN Link with MASTER is down and replica-serve-stale-data is set to 'no'.",
        b"READONLY You can't write against a read only replica.",
        b"BUSY Redis is busy running a script. You can only call SCRIPT KILL or SHUTDOWN NOSCRIPT.",
        b"MISCONF Redis is configured to save RDB snapshots, but it's currently unable to persist to disk.",
    ],
    ids=lambda error: error.split()[0].decode(),
)
async def test_each_unavailable_reply_answers_503(
    settings: Settings, redis_server: RedisServer, error: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    from mongomock_motor import AsyncMongoMockClient

    proxy = await ErrorReplyProxy(redis_server.port).start()
    client = Redis.from_url(proxy.url)
    ctx = await bootstrap(settings, redis=client, mongo=AsyncMongoMockClient(tz_aware=True)["billing_unavail"])
    await ctx.start()
    api, server = await serve(ctx)
    try:
        assert (await api.deposit(1, "5.00")).status == 201
        proxy.error = error
        await assert_unavailable_and_unchanged(api, ctx, caplog)
        proxy.error = None
        assert (await api.deposit(1, "1.00")).status == 201
    finally:
        api.close()
        server.stop()
        await ctx.stop()
        await client.aclose()
        await proxy.close()


async def test_a_script_error_of_another_kind_stays_500(live: tuple[Api, Context]) -> None:
    api, ctx = live
    await ctx.redis.delete(ctx.ledger.keys.account(2))
    await ctx.redis.set(ctx.ledger.keys.account(2), "not a hash")  # WRONGTYPE inside the script
    r = await api.post("/v1/deposits", {"user_id": 2, "amount": "1.00"}, token="tok-payments")
    problem(r, 500, "internal_error")
    r = await api.post("/v1/batch", {"operations": [{"op": "deposit", "user_id": 2, "amount": "1.00"}]})
    assert r.status == 200, r.body
    assert [(x["status"], x["body"]["code"]) for x in r.json["results"]] == [(500, "internal_error")]
