"""`billing reconcile` and `billing rebuild` with BILLING_REDIS_MODE=cluster, on the session's Redis Cluster.

Load goes through `billing serve --workers 2` on the cluster (tests/support/cluster_service.py); the commands
run as processes with the server's settings. Reconcile reads every partition through the cluster (SCAN on every
master, a MULTI per partition) and passes after the load, and fails once one account is changed on its node;
rebuild restores every balance after FLUSHALL on every master (and again with --force over them). A transfer
left in transit between partitions is counted, and a transit lost from Redis is found, transfer by transfer
against the ledger.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Any

import pytest
import redis
from redis.crc import key_slot

from billing.bootstrap import bootstrap
from billing.ledger.scripts import Idempotency, RedisKeys
from billing.ledger.service import OPERATIONS
from billing.projection.recovery import reconcile
from billing.projection.store import LedgerStore
from tests.support.api import Api
from tests.support.cluster_service import PARTITIONS, ClusterService
from tests.support.redis_cluster import LocalCluster, cluster_settings
from tests.support.workload import deposit

BILLING = str(Path(sys.executable).with_name("billing"))
USERS = range(1, 25)  # over all 16 partitions and the 3 masters


async def billing(service: ClusterService, *args: str) -> tuple[int, str, str]:
    env = {**service.process.env, "BILLING_LOG_LEVEL": "WARNING"}
    proc = await asyncio.create_subprocess_exec(
        BILLING, *args, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def load(api: Api) -> dict[int, tuple[str, str]]:
    """Deposits, transfers between partitions, reservations (one recognized, one cancelled, one open) and
    withdrawals from concurrent clients; every user's (available, reserved) afterwards."""
    for user in USERS:
        assert (await api.deposit(user, "100.00")).status == 201
    moves = [
        api.post(
            "/v1/transfers",
            {"from_user_id": user, "to_user_id": USERS[-1] + 1 - user, "amount": f"{user}.25"},
            token="tok-payments",
        )
        for user in USERS
    ]
    moves += [api.post("/v1/withdrawals", {"user_id": user, "amount": "1.01"}, token="tok-payments") for user in USERS]
    for order, user in enumerate(USERS[:3], 1):
        reservation = {"user_id": user, "service_id": 4, "order_id": order, "amount": "10.00"}
        assert (await api.post("/v1/reservations", reservation, token="tok-orders")).status == 201
    assert {r.status for r in await asyncio.gather(*moves)} == {201}
    settle = {"user_id": 1, "service_id": 4, "order_id": 1, "amount": "7.50"}
    assert (await api.post("/v1/reservations/recognize", settle, token="tok-orders")).status == 200
    cancel = {"user_id": 2, "service_id": 4, "order_id": 2}
    assert (await api.post("/v1/reservations/cancel", cancel, token="tok-orders")).status == 200
    return await balances(api)


async def balances(api: Api) -> dict[int, tuple[str, str]]:
    answer = await api.get(f"/v1/balances?user_ids={','.join(map(str, USERS))}", token="tok-support")
    assert answer.status == 200, answer.body
    return {item["user_id"]: (item["available"], item["reserved"]) for item in answer.json["items"]}


def node_of(cluster: LocalCluster, key: str) -> redis.Redis:
    """A plain client of the master that holds the key."""
    return redis.Redis(port=cluster.master_of_slot(key_slot(key.encode())).port, decode_responses=True)


async def test_reconcile_passes_fails_on_a_changed_account_and_passes_after_a_rebuild_of_flushed_masters(
    cluster_service: ClusterService,
) -> None:
    await asyncio.to_thread(cluster_service.empty)
    api = Api(cluster_service.url)
    try:
        before = await load(api)
        code, out, err = await billing(cluster_service, "reconcile")  # projects the outbox: MongoDB has it all
        assert code == 0, out + err
        assert out.startswith(f"reconcile: {len(USERS)} accounts, 3 reservations,") and out.rstrip().endswith(": OK")

        account = RedisKeys(cluster_service.prefix, PARTITIONS).account(7)
        with node_of(cluster_service.cluster, account) as node:
            assert node.hget(account, "available") == before[7][0].replace(".", "")
            node.hincrby(account, "available", 1)  # one kopeck out of nowhere, on the account's master
        code, out, err = await billing(cluster_service, "reconcile")
        assert code == 1, out + err
        assert "MISMATCH account user 7 (available, reserved)" in out

        for master in cluster_service.cluster.masters():
            with master.client() as node:
                node.flushall()
        assert (await api.balance(1)).status == 404
        code, out, err = await billing(cluster_service, "rebuild")
        assert code == 0, out + err
        assert out.startswith(f"rebuild: {len(USERS)} accounts, 3 reservations (1 open)")
        assert await balances(api) == before  # the changed kopeck is gone: the ledger's balances
        code, out, err = await billing(cluster_service, "rebuild", "--force")  # over what it holds now
        assert code == 0, out + err
        code, out, err = await billing(cluster_service, "reconcile")
        assert code == 0, out + err
        assert await balances(api) == before
    finally:
        api.close()


class Died(Exception):
    """The process died between the debit and the credit of a transfer (the fault injection hook)."""


@pytest.mark.parametrize("mongo_backend", ["secantus"], indirect=True)
async def test_a_transfer_in_transit_is_counted_and_a_lost_transit_is_found(
    redis_cluster: LocalCluster, mongo_db: Any, prefix: str, tmp_path: Path
) -> None:
    """In the test's process, with no recovery loop: the transfer stays debited and not credited."""
    settings = cluster_settings(redis_cluster, prefix, tmp_path)
    context = await bootstrap(settings, mongo=mongo_db)
    try:
        await deposit(context.ledger, 1, 100_00)
        await deposit(context.ledger, 2, 5_00)

        async def die(at: str, transfer_id: int) -> None:
            if at == "debited":
                raise Died(at)

        context.ledger.between_transfer_steps = die
        spec = OPERATIONS["transfer"]
        request = spec.model.model_validate({"from_user_id": 1, "to_user_id": 2, "amount": "30.00"})
        with pytest.raises(Died):
            await context.operations.execute(spec, request, Idempotency("tok", "k"), "en")
        context.ledger.between_transfer_steps = None
        keys, store = context.ledger.keys, LedgerStore(context.mongo)

        report = await reconcile(context.redis, keys, store, context.projector, drain_timeout=15)
        assert report.ok and report.in_transit == 30_00, report.mismatches

        sender = keys.partition_of(1)
        await context.redis.delete(keys.transits(sender))  # the transit lost: the money would never arrive
        report = await reconcile(context.redis, keys, store, context.projector, drain_timeout=15)
        [mismatch] = report.mismatches
        assert (mismatch.kind, mismatch.ledger) == ("transit", 30_00)
        assert mismatch.subject.startswith(f"partition {sender} transfer ") and mismatch.subject.endswith(" missing")
    finally:
        await context.stop()
