"""`billing events tail` as a process, on redis-server and SecantusDB: the feed as JSON lines, resumable."""

from __future__ import annotations

import asyncio
import os
import signal

import orjson
import pytest

from billing.bootstrap import Context
from tests.processes.test_ledger_cli import BILLING, billing
from tests.support.servers import MongoWireServer, RedisServer
from tests.support.workload import deposit

pytestmark = [
    pytest.mark.parametrize("mongo_backend", ["secantus"], indirect=True),
    pytest.mark.parametrize("redis_backend", ["redis"], indirect=True),
]


@pytest.fixture
def env(ctx: Context, redis_server: RedisServer, mongo_server: MongoWireServer) -> dict[str, str]:
    """The ledger commands' environment, with the test's BILLING_SECRET: the command's cursors are the API's."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("BILLING_")}
    return {
        **clean,
        "BILLING_REDIS_URL": redis_server.url,
        "BILLING_MONGO_URL": mongo_server.url,
        "BILLING_MONGO_DB": ctx.mongo.name,
        "BILLING_REDIS_PREFIX": ctx.settings.redis_prefix,
        "BILLING_SECRET": ctx.settings.secret or "",
        "BILLING_CONFIG_FILE": os.devnull,
        "BILLING_LOG_LEVEL": "WARNING",
    }


def events_of(stdout: str) -> list[dict[str, object]]:
    return [orjson.loads(line) for line in stdout.splitlines()]


def resume_position(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.startswith("next: ")]
    assert len(lines) == 1, stderr
    return lines[0].removeprefix("next: ")


async def test_tail_prints_every_event_once_and_resumes_where_it_stopped(ctx: Context, env: dict[str, str]) -> None:
    for n in range(1, 6):
        await deposit(ctx.ledger, n, n * 100)
    await ctx.projector.drain()
    code, out, err = await billing(env, "events", "tail", "--limit", "3")
    assert code == 0, err
    first = events_of(out)
    assert [e["type"] for e in first] == ["transaction.created"] * 3
    after = resume_position(err)
    code, out, err = await billing(env, "events", "tail", "--after", after, "--limit", "2")
    assert code == 0, err
    rest = events_of(out)
    ids = [e["id"] for e in first + rest]
    assert len(set(ids)) == 5
    assert sorted(e["data"]["user_id"] for e in first + rest) == [1, 2, 3, 4, 5]  # type: ignore[index]
    # The API takes the position the command left (the same BILLING_SECRET).
    page = await ctx.events.page({"after": resume_position(err)}, "ru")
    assert page["items"] == []


async def test_tail_follows_new_events_until_stopped(ctx: Context, env: dict[str, str]) -> None:
    proc = await asyncio.create_subprocess_exec(
        BILLING, "events", "tail", env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    try:
        await deposit(ctx.ledger, 7, 700)
        await ctx.projector.drain()
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), 60)
        assert orjson.loads(line)["data"]["amount"] == "7.00"
        proc.send_signal(signal.SIGTERM)
        out, err = await asyncio.wait_for(proc.communicate(), 60)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode == 0, err
    assert out == b""
    assert resume_position(err.decode())


async def test_a_bad_position_is_one_line(ctx: Context, env: dict[str, str]) -> None:
    code, _out, err = await billing(env, "events", "tail", "--after", "nonsense", "--limit", "1")
    assert code == 2
    assert err.strip().splitlines() == [
        "billing events: --after: The cursor is malformed; use next exactly as returned"
    ]
