"""`billing project`, `billing reconcile`, `billing rebuild`, `billing recover` and `billing verify` as processes,
on redis-server and SecantusDB."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import sys
from pathlib import Path

import pytest

from billing.bootstrap import Context
from billing.core.config import MAX_PARTITIONS, Settings
from billing.projection.projector import GROUP
from tests.support.servers import MongoWireServer, RedisServer
from tests.support.terminal import run_in_terminal
from tests.support.workload import deposit, mixed_workload, run

BILLING = str(Path(sys.executable).with_name("billing"))

pytestmark = [
    pytest.mark.parametrize("mongo_backend", ["secantus"], indirect=True),
    pytest.mark.parametrize("redis_backend", ["redis"], indirect=True),
]


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return settings.model_copy(update={"projector_enabled": False})


@pytest.fixture
def env(ctx: Context, redis_server: RedisServer, mongo_server: MongoWireServer) -> dict[str, str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("BILLING_")}
    return {
        **clean,
        "BILLING_REDIS_URL": redis_server.url,
        "BILLING_MONGO_URL": mongo_server.url,
        "BILLING_MONGO_DB": ctx.mongo.name,
        "BILLING_REDIS_PREFIX": ctx.settings.redis_prefix,
        "BILLING_CONFIG_FILE": os.devnull,
        "BILLING_LOG_LEVEL": "WARNING",
    }


async def billing(env: dict[str, str], *args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        BILLING, *args, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    return proc.returncode, out.decode(), err.decode()


async def start_projector(env: dict[str, str], **overrides: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        BILLING, "project", env={**env, **overrides}, stdout=asyncio.subprocess.DEVNULL
    )


async def wait_projected(ctx: Context, timeout: float = 60) -> None:
    for _ in range(int(timeout / 0.05)):
        if (await ctx.projector.lag())["entries"] == 0:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"not projected: {await ctx.projector.lag()}")


async def wipe(ctx: Context) -> None:
    async for key in ctx.redis.scan_iter(match=f"{ctx.settings.redis_prefix}*"):
        await ctx.redis.delete(key)


async def test_project_reconcile_rebuild_commands(ctx: Context, env: dict[str, str]) -> None:
    projector = await start_projector(env, BILLING_PROJECTOR_BLOCK_MS="50")
    try:
        await mixed_workload(ctx.ledger, random.Random(11), 150)
        await deposit(ctx.ledger, 2, 12_345)
        await wait_projected(ctx)
    finally:
        projector.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(projector.wait(), 30) == 0
    assert await ctx.mongo.transactions.count_documents({}) > 100

    code, out, err = await billing(env, "reconcile")
    assert code == 0, (out, err)
    assert out.startswith("reconcile: ") and out.strip().endswith("OK")

    await ctx.redis.hincrby(ctx.ledger.keys.account(2), "reserved", 7)
    code, out, err = await billing(env, "reconcile")
    assert code == 1, (out, err)
    assert "MISMATCH account user 2 (available, reserved)" in out

    code, out, err = await billing(env, "rebuild")
    assert code == 2 and out == ""
    assert err.splitlines() == [
        "billing rebuild: refused: Redis already holds accounts under this prefix; use --force to overwrite them"
    ]

    partition = ctx.ledger.keys.partition_of(2)
    ids = [int(d["_id"]) async for d in ctx.mongo.transactions.find({}, {"_id": 1})]
    largest = max(i for i in ids if i % MAX_PARTITIONS == partition)  # the last id of user 2's partition
    await wipe(ctx)
    guard = ctx.sequence_guard
    assert await guard.check() is not None  # an emptied Redis would reuse ids: money writes refused
    code, out, err = await billing(env, "rebuild")
    assert code == 0 and out.startswith("rebuild: "), (out, err)
    assert await guard.check() is None  # the sequence is restored: writes resume
    code, out, err = await billing(env, "reconcile")
    assert code == 0, (out, err)
    assert int((await deposit(ctx.ledger, 2, 1)).body["transaction"]["id"]) == largest + MAX_PARTITIONS


async def test_a_killed_projector_process_loses_and_doubles_nothing(ctx: Context, env: dict[str, str]) -> None:
    amounts = list(range(1, 1501))
    for amount in amounts:
        await deposit(ctx.ledger, 1 + amount % 7, amount)
    first = await start_projector(env, BILLING_PROJECTOR_BATCH="25")
    for _ in range(1200):  # kill it mid-stream, most likely with a batch in hand
        if await ctx.mongo.transactions.count_documents({}) >= 200:
            break
        await asyncio.sleep(0.025)
    first.kill()
    await first.wait()
    assert 0 < await ctx.mongo.transactions.count_documents({}) < len(amounts)

    second = await start_projector(env, BILLING_PROJECTOR_BATCH="100", BILLING_PROJECTOR_CLAIM_IDLE_MS="300")
    try:
        await wait_projected(ctx)
    finally:
        second.send_signal(signal.SIGTERM)
        await second.wait()
    docs = await ctx.mongo.transactions.find({}, {"amount": 1}).to_list(None)
    assert sorted(int(d["amount"]) for d in docs) == amounts  # each exactly once
    for stream in ctx.projector.streams:
        assert (await ctx.redis.xpending(stream, GROUP))["pending"] == 0
    code, out, err = await billing(env, "verify")  # every chain linked in order across the kill
    assert code == 0, (out, err)


async def test_long_commands_show_progress_on_a_terminal_and_nothing_when_piped(
    ctx: Context, env: dict[str, str]
) -> None:
    for user_id in (1, 2, 3):
        await deposit(ctx.ledger, user_id, 1_000)

    code, screen = await asyncio.to_thread(run_in_terminal, [BILLING, "reconcile"], env)
    assert code == 0, screen
    for step in ("read accounts from Redis", "read the MongoDB ledger", "compare accounts", "3/3"):
        assert step in screen, screen
    assert "reconcile: 3 accounts, 0 reservations, 3 ledger transactions: OK" in screen
    code, out, err = await billing(env, "reconcile")
    assert (code, err) == (0, "") and out == "reconcile: 3 accounts, 0 reservations, 3 ledger transactions: OK\n"

    await wipe(ctx)
    code, screen = await asyncio.to_thread(run_in_terminal, [BILLING, "rebuild"], env)
    assert code == 0, screen
    assert "write accounts to Redis" in screen and "rebuild: 3 accounts" in screen
    code, out, err = await billing(env, "rebuild", "--force")
    assert (code, err) == (0, "") and out.startswith("rebuild: 3 accounts") and out.count("\n") == 1


async def test_recover_completes_a_transfer_left_in_transit(ctx: Context, env: dict[str, str]) -> None:
    assert ctx.transit_recovery is not None
    await ctx.transit_recovery.stop()  # `billing recover` is to do it
    await deposit(ctx.ledger, 1, 10_000)

    async def died(step: str, transfer_id: int) -> None:
        raise RuntimeError("the process died after the debit")

    ctx.ledger.between_transfer_steps = died
    with pytest.raises(RuntimeError):
        await run(ctx.ledger, ctx.ledger.transfer_call(1, 2, 2_500, None))
    ctx.ledger.between_transfer_steps = None
    assert await ctx.ledger.balance(2) is None
    await asyncio.sleep(1.1)  # `billing recover` takes transits a second old, as the loop does

    code, out, err = await billing(env, "recover")
    assert (code, out) == (0, "recover: 1 transfers in transit completed\n"), (out, err)
    assert "completed transfer" in err and "left in transit" in err  # logged as a warning: a request died
    assert await ctx.ledger.balance(2) == (2_500, 0) and await ctx.ledger.open_transits() == []
    code, out, _err = await billing(env, "recover")
    assert (code, out) == (0, "recover: 0 transfers in transit completed\n")


async def test_verify_checks_the_chains_and_names_an_edited_transaction(ctx: Context, env: dict[str, str]) -> None:
    await mixed_workload(ctx.ledger, random.Random(5), 80)
    code, out, err = await billing(env, "verify")  # projects the outbox first
    assert code == 0, (out, err)
    count = await ctx.mongo.transactions.count_documents({})
    assert out.startswith(f"verify: {count} transactions of ") and "transactions/s): OK" in out
    assert "\nreconcile: " in out and out.strip().endswith("OK")

    victim = await ctx.mongo.transactions.find_one({"user_id": 3}, sort=[("_id", -1)])
    await ctx.mongo.transactions.update_one({"_id": victim["_id"]}, {"$set": {"comment": "nobody saw this"}})
    code, out, err = await billing(env, "verify")
    assert code == 1, (out, err)
    assert f"  BREAK user 3 transaction {int(victim['_id'])}: " in out and f"stored {victim['hash']})" in out
    code, out, err = await billing(env, "verify", "--user", "2")  # another user's chain holds
    assert code == 0, (out, err)
    code, out, err = await billing(env, "verify", "--user", "x")
    assert code == 2 and "--user" in err
