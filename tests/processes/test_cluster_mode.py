"""BILLING_REDIS_MODE=cluster against a real Redis Cluster (tests/support/redis_cluster.py): the app served in
this process with 16 partitions, the route of the ledger's commands, and the projectors sharing the partitions.
Every ledger script names the keys of one partition; an Idempotency-Key's pointer in another partition is
claimed by a call of its own first."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import fakeredis
import pytest
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.crc import key_slot
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError
from redis.exceptions import TimeoutError as RedisTimeoutError

from billing.app import make_app
from billing.bootstrap import Context, bootstrap
from billing.core.config import ConfigError, Settings, check_settings
from billing.infra.redis_route import ClusterRoute
from billing.infra.stores import connect_redis
from billing.ledger.scripts import Idempotency, Ledger, RedisKeys
from billing.projection.leases import PartitionLeases
from billing.projection.projector import Projector
from billing.projection.store import LedgerStore
from tests.support.api import TEST_TOKENS, Api, problem
from tests.support.redis_cluster import PARTITIONS, LocalCluster, cluster_settings
from tests.support.servers import RedisServer, served
from tests.support.workload import deposit

# Counts its runs in KEYS[1] and answers the count.
# A function library of one function counting its runs in its key.
COUNT_RUNS = "#!lua name=count_runs\nredis.register_function('count_runs', function(keys) return redis.call('INCR', keys[1]) end)"
COUNT = ["FCALL", "count_runs", "1"]


@pytest.fixture
def settings(redis_cluster: LocalCluster, prefix: str, tmp_path: Path) -> Settings:
    return cluster_settings(redis_cluster, prefix, tmp_path)


@pytest.fixture
async def ctx(settings: Settings, mongo_db: Any) -> AsyncIterator[Context]:
    """The app's components on the cluster, the Redis client made from the settings as `billing serve` does."""
    context = await bootstrap(settings, mongo=mongo_db)
    await context.start()
    yield context
    await context.stop()


@pytest.fixture
async def api(ctx: Context) -> AsyncIterator[Api]:
    async with served(make_app(ctx)) as url:
        client = Api(url)
        yield client
        client.close()


@pytest.fixture
async def cluster(redis_cluster: LocalCluster) -> AsyncIterator[RedisCluster]:
    """A plain cluster client of the test's own (answers decoded)."""
    client = RedisCluster.from_url(redis_cluster.url, decode_responses=True)
    yield client
    await client.aclose()


async def eventually(check: Callable[[], Awaitable[bool]], timeout: float = 15.0) -> None:
    """Poll until `check` holds (a deadline against hanging, not an assertion about time)."""
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached")
        await asyncio.sleep(0.05)


# ---- settings ----------------------------------------------------------------------------------------


def test_the_mode_is_single_or_cluster(monkeypatch: pytest.MonkeyPatch) -> None:
    from pydantic import ValidationError

    from billing.core.config import describe_validation_error

    monkeypatch.setenv("BILLING_REDIS_MODE", "sentinel")
    with pytest.raises(ValidationError) as caught:
        Settings(_env_file=None)
    assert describe_validation_error(caught.value) == "BILLING_REDIS_MODE: Input should be 'single' or 'cluster'"
    monkeypatch.setenv("BILLING_REDIS_MODE", "cluster")
    assert Settings(_env_file=None).redis_mode == "cluster"
    monkeypatch.delenv("BILLING_REDIS_MODE")
    assert Settings(_env_file=None).redis_mode == "single"


def test_cluster_mode_needs_a_url_and_waits_need_a_timeout_below_the_requests() -> None:
    with pytest.raises(ConfigError, match="^BILLING_REDIS_MODE: cluster needs BILLING_REDIS_URL"):
        check_settings(Settings(redis_mode="cluster", _env_file=None))
    with pytest.raises(ConfigError, match="^BILLING_REDIS_WAIT_REPLICAS: must be 0 or more"):
        check_settings(Settings(redis_wait_replicas=-1, _env_file=None))
    with pytest.raises(ConfigError, match="^BILLING_REDIS_WAIT_TIMEOUT_MS"):
        check_settings(Settings(redis_wait_timeout_ms=0, _env_file=None))
    waits = {"redis_wait_replicas": 1, "redis_wait_timeout_ms": 5000, "request_timeout_seconds": 5}
    with pytest.raises(ConfigError, match="^BILLING_REDIS_WAIT_TIMEOUT_MS"):  # the socket would time out first
        check_settings(Settings(**waits, _env_file=None))
    check_settings(Settings(**{**waits, "redis_wait_timeout_ms": 4999}, _env_file=None))
    check_settings(Settings(redis_mode="cluster", redis_url="redis://127.0.0.1:7000", _env_file=None))


# ---- the app on the cluster ------------------------------------------------------------------------


async def test_the_function_library_reaches_every_node(redis_cluster: LocalCluster, ctx: Context) -> None:
    """Loaded on the masters, replicated to their replicas: any of them may be promoted at any time."""
    assert isinstance(ctx.redis, RedisCluster)
    name = ctx.ledger.library.name
    assert len(redis_cluster.nodes) == 6

    async def everywhere() -> bool:
        for node in redis_cluster.nodes:
            with node.client() as direct:
                if not direct.function_list(library=name):
                    return False
        return True

    await eventually(everywhere)


async def test_balances_are_read_from_each_users_node(
    redis_cluster: LocalCluster, ctx: Context, api: Api, cluster: RedisCluster
) -> None:
    keys = ctx.ledger.keys
    users = list(range(1, 41))
    for user in users[::2]:  # every second user has an account, written as the scripts write it
        await cluster.hset(keys.account(user), mapping={"available": user * 100, "reserved": user})
    assert len({redis_cluster.master_of_slot(key_slot(keys.account(u).encode())).port for u in users}) == 3

    response = await api.get(f"/v1/balances?user_ids={','.join(map(str, users))},3", token="tok-support")
    assert response.status == 200, response.body
    expected = [
        {"user_id": u, "available": f"{u}.00", "reserved": f"{u / 100:.2f}"}
        if u % 2
        else {"user_id": u, "error": "account_not_found"}
        for u in [*users, 3]
    ]
    assert response.json["items"] == expected
    assert (await api.balance(7)).json == {"user_id": 7, "available": "7.00", "reserved": "0.07"}
    problem(await api.balance(8), 404, "account_not_found")


async def test_the_app_is_ready_on_the_cluster(api: Api) -> None:
    response = await api.get("/readyz", token=None)
    assert response.status == 200, response.body


async def test_money_operations_of_single_users(api: Api, ctx: Context) -> None:
    users = range(1, 21)  # over every master
    for user in users:
        created = await api.deposit(user, "100.00")
        assert created.status == 201, created.body
    withdrawn = await api.post("/v1/withdrawals", {"user_id": 3, "amount": "30.00"}, token="tok-payments")
    assert withdrawn.status == 201 and withdrawn.json["balance"]["available"] == "70.00"
    problem(
        await api.post("/v1/withdrawals", {"user_id": 4, "amount": "100.01"}, token="tok-payments"),
        409,
        "insufficient_funds",
    )
    reservation = {"user_id": 5, "service_id": 7, "order_id": 1, "amount": "40.00"}
    assert (await api.post("/v1/reservations", reservation, token="tok-orders")).status == 201
    recognized = await api.post("/v1/reservations/recognize", {**reservation, "amount": "25.00"}, token="tok-orders")
    assert recognized.status == 200 and recognized.json["balance"] == {
        "user_id": 5,
        "available": "75.00",
        "reserved": "0.00",
    }
    balances = await api.get(f"/v1/balances?user_ids={','.join(map(str, users))}", token="tok-support")
    available = [item["available"] for item in balances.json["items"]]
    assert available == ["100.00", "100.00", "70.00", "100.00", "75.00"] + ["100.00"] * 15
    await ctx.projector.drain(timeout=15)
    history = await api.get("/v1/users/5/transactions", token="tok-support")
    items = history.json["items"]  # newest first
    assert [(item["type"], item["amount"]) for item in items] == [
        ("release", "15.00"),
        ("charge", "25.00"),
        ("reserve", "40.00"),
        ("deposit", "100.00"),
    ]


async def test_reservations_expire_on_the_cluster(api: Api, ctx: Context) -> None:
    """Reserve, the sweeper (a due read per partition, then lua/expire.lua, each on its node), the expired read and
    the refused recognize, for users over every master."""
    assert ctx.reservation_sweeper is not None
    await ctx.reservation_sweeper.stop()
    users = range(1, 11)
    deadlines = {}
    for user in users:
        assert (await api.deposit(user, "10.00")).status == 201
        body = {"user_id": user, "service_id": 3, "order_id": 9, "amount": "4.00", "expires_in": 60}
        reserved = await api.post("/v1/reservations", body, token="tok-orders")
        assert reserved.status == 201, reserved.body
        deadlines[user] = await ctx.ledger.reservation(user, 3, 9)
    for user, record in deadlines.items():
        assert record is not None
        await ctx.redis.hset(ctx.ledger.keys.meta(ctx.ledger.keys.partition_of(user)), "clock", record["expires_at"])
    shown = await api.get("/v1/reservations?user_id=1&service_id=3&order_id=9", token="tok-orders")
    assert shown.json["status"] == "expired"
    refused = await api.post(
        "/v1/reservations/recognize",
        {"user_id": 1, "service_id": 3, "order_id": 9, "amount": "4.00"},
        token="tok-orders",
    )
    problem(refused, 409, "reservation_expired")
    assert await ctx.reservation_sweeper.run_once() == len(users) - 1  # user 1's went with the recognize
    balances = await api.get(f"/v1/balances?user_ids={','.join(map(str, users))}", token="tok-support")
    assert {item["reserved"] for item in balances.json["items"]} == {"0.00"}


async def test_a_retry_with_the_same_idempotency_key_is_answered_as_the_first(api: Api) -> None:
    key = uuid.uuid4().hex
    first = await api.deposit(11, "10.00", key=key)
    again = await api.deposit(11, "10.00", key=key)
    assert first.status == 201 and again.status == 201
    assert again.json == first.json
    assert (await api.balance(11)).json["available"] == "10.00"


async def test_a_key_used_for_a_user_of_another_partition_is_refused_and_changes_nothing(
    api: Api, ctx: Context
) -> None:
    keys = ctx.ledger.keys
    key = uuid.uuid4().hex
    home = keys.idempotency_home(Idempotency("x", key))[0]
    users = [u for u in range(20, 400) if keys.partition_of(u) != home]
    first, other = users[0], next(u for u in users if keys.partition_of(u) != keys.partition_of(users[0]))
    assert (await api.deposit(first, "10.00", key=key)).status == 201  # its pointer is claimed at the home
    reused = await api.deposit(other, "10.00", key=key)
    assert reused.status == 422, reused.body
    assert (await api.balance(other)).status == 404
    assert (await api.deposit(first, "10.00", key=key)).status == 201  # the first request's retry replays
    assert (await api.balance(first)).json["available"] == "10.00"


async def test_the_pointer_holds_only_the_fingerprint_and_lives_as_long_as_the_record(api: Api, ctx: Context) -> None:
    keys = ctx.ledger.keys
    key = uuid.uuid4().hex
    scope = ctx.auth.authenticate("Bearer tok-payments").name
    idem = Idempotency(scope, key)
    home = keys.idempotency_home(idem)[0]
    user = next(u for u in range(20, 400) if keys.partition_of(u) != home)
    record, pointer = keys.idempotency_record(idem, keys.partition_of(user))
    assert record.startswith(keys.tag(keys.partition_of(user))) and pointer == keys.idempotency(idem)
    assert (await api.deposit(user, "5.00", key=key)).status == 201
    stored_record, stored_pointer = await ctx.redis.get(record), await ctx.redis.get(pointer)
    fingerprint = stored_record.split(b"\n")[0]
    assert stored_pointer == fingerprint + b"\n@" + str(keys.partition_of(user)).encode()
    ttl = ctx.settings.idempotency_ttl_seconds
    assert ttl - 5 <= await ctx.redis.ttl(pointer) <= ttl and ttl - 5 <= await ctx.redis.ttl(record) <= ttl
    # a key at home in its user's partition is one key: no pointer
    at_home = next(u for u in range(20, 400) if keys.partition_of(u) == home)
    assert keys.idempotency_record(idem, keys.partition_of(at_home)) == (pointer, None)


async def test_a_transfer_between_partitions(api: Api, ctx: Context) -> None:
    keys = ctx.ledger.keys
    sender, recipient = 1, next(u for u in range(2, 100) if keys.partition_of(u) != keys.partition_of(1))
    assert (await api.deposit(sender, "10.00")).status == 201
    moved = await api.post(
        "/v1/transfers", {"from_user_id": sender, "to_user_id": recipient, "amount": "4.00"}, token="tok-payments"
    )
    assert moved.status == 201, moved.body
    assert (await api.balance(recipient)).json["available"] == "4.00"


async def test_a_deposit_whose_reply_is_lost_runs_once_and_answers_503(
    redis_cluster: LocalCluster, prefix: str, tmp_path: Path, mongo_db: Any
) -> None:
    """The user's master stops after the deposit reached its socket: the client times out (503, outcome
    unknown) and sends nothing again; once the master goes on, the deposit has run at most once."""
    settings = cluster_settings(redis_cluster, prefix, tmp_path, request_timeout_seconds=0.25)
    context = await bootstrap(settings, mongo=mongo_db)
    await context.start()
    try:
        async with served(make_app(context)) as url:
            api = Api(url)
            user = 21
            master = redis_cluster.master_of_slot(key_slot(context.ledger.keys.account(user).encode()))
            problem(await api.balance(user), 404, "account_not_found")  # a connection to the master, kept
            redis_cluster.pause(master)
            try:
                problem(await api.deposit(user, "5.00"), 503, "unavailable")
            finally:
                redis_cluster.resume(master)

            # The master runs what reached it once it goes on: the deposit once, or never when the client's
            # close reached it first (the outcome was unknown: 503); never twice.
            await asyncio.sleep(0.5)
            after = await api.balance(user)
            assert (after.status, after.json.get("available")) in ((200, "5.00"), (404, None)), after.body
            assert (await api.deposit(user, "1.00")).status == 201  # the partition takes writes again
            api.close()
    finally:
        await context.stop()


# ---- the route -----------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def cluster_route(cluster: LocalCluster, timeout: float = 5.0, **options: Any) -> AsyncIterator[ClusterRoute]:
    """The ledger's route on a client made as the app makes it, with this request timeout."""
    settings = Settings(redis_url=cluster.url, redis_mode="cluster", request_timeout_seconds=timeout, _env_file=None)
    client = connect_redis(settings)
    assert isinstance(client, RedisCluster)
    try:
        yield ClusterRoute(client, **options)
    finally:
        await client.aclose()


@pytest.fixture
async def route(redis_cluster: LocalCluster) -> AsyncIterator[ClusterRoute]:
    async with cluster_route(redis_cluster) as made:
        yield made


async def test_a_script_whose_reply_is_lost_is_not_sent_again(
    redis_cluster: LocalCluster, cluster: RedisCluster
) -> None:
    key = f"{{p3}}:{uuid.uuid4().hex}"
    async with cluster_route(redis_cluster, timeout=0.25) as route:
        await route.load_library(COUNT_RUNS)
        assert await route.write([*COUNT, key]) == 1
        master = redis_cluster.master_of_slot(key_slot(key.encode()))
        # Shorter than cluster-node-timeout: nobody fails it over. The script reaches the master's socket
        # on the connection the first one used; its reply does not come within the timeout.
        redis_cluster.pause(master)
        try:
            with pytest.raises(RedisTimeoutError):
                await route.write([*COUNT, key])
        finally:
            redis_cluster.resume(master)

        async def ran() -> bool:
            return bool(await cluster.get(key) == "2")

        await eventually(ran)
        assert await route.command(["GET", key]) == b"2"  # ran once: nothing was sent again


class ClosedUnderTheCommand:
    """A cluster client whose commands fail as redis-py's do on a connection it closed while they used it (after a
    ClusterDownError of another command, seen in bench/failover.py): AttributeError on the stream."""

    def __init__(self, in_replies: bool = False) -> None:
        self.in_replies = in_replies

    async def initialize(self) -> None:
        pass

    async def execute_command(self, *args: Any, **kwargs: Any) -> Any:
        raise AttributeError("'NoneType' object has no attribute 'writelines'")

    def get_node_from_key(self, key: str) -> Any:
        return ClusterNode("127.0.0.1", 1)

    def pipeline(self) -> Any:
        client = self

        class Pipeline:
            def execute_command(self, *args: Any, **kwargs: Any) -> None:
                pass

            async def execute(self, raise_on_error: bool = True) -> list[Any]:
                if client.in_replies:  # failed reading: the error in place of the reply
                    return [AttributeError("'NoneType' object has no attribute 'read'"), 1]
                return [await client.execute_command()]

        return Pipeline()


@pytest.mark.parametrize(("wait_replicas", "in_replies"), [(0, False), (1, False), (1, True)])
async def test_a_connection_closed_under_a_command_is_a_lost_connection(wait_replicas: int, in_replies: bool) -> None:
    """Answered 503 (store unavailable; the client retries with its Idempotency-Key), never 500."""
    route = ClusterRoute(ClosedUnderTheCommand(in_replies), wait_replicas=wait_replicas)  # type: ignore[arg-type]
    with pytest.raises(RedisConnectionError, match="connection closed under the command"):
        await route.write(["FCALL", "count_runs", "1", "{p1}:k"])
    with pytest.raises(RedisConnectionError):
        await route.command(["GET", "{p1}:k"])


async def test_a_write_waits_for_a_replica_and_a_short_wait_is_counted(
    redis_cluster: LocalCluster, route: ClusterRoute
) -> None:
    key = f"{{p5}}:{uuid.uuid4().hex}"
    await route.load_library(COUNT_RUNS)
    short: list[tuple[int, int]] = []
    route.wait_replicas, route.wait_timeout_ms = 1, 200  # within the client's 5 s socket timeout
    route.on_short_wait = lambda asked, acknowledged: short.append((asked, acknowledged))
    assert await route.write([*COUNT, key]) == 1
    assert short == []
    (replica,) = redis_cluster.replicas_of(redis_cluster.master_of_slot(key_slot(key.encode())))
    redis_cluster.pause(replica)  # shorter than cluster-node-timeout: nobody fails it over
    try:
        assert await route.write([*COUNT, key]) == 2  # answered as usual
    finally:
        redis_cluster.resume(replica)
    assert short == [(1, 0)]
    replies = await route.pipeline([[*COUNT, f"{{p{n}}}:{key}"] for n in range(PARTITIONS)], write=True)
    assert replies == [1] * PARTITIONS and short == [(1, 0)]  # one WAIT per node, each acknowledged


async def test_a_master_refusing_the_library_leaves_the_others_loaded(
    redis_cluster: LocalCluster, route: ClusterRoute
) -> None:
    """A master out of memory (or demoted) refuses FUNCTION LOAD: the other masters still get the library, and only
    that master's calls answer NoScriptError (they did not run) until it can load it."""
    name = f"refused_{uuid.uuid4().hex[:8]}"
    library = (
        f"#!lua name={name}\nredis.register_function('{name}', function(keys) return redis.call('INCR', keys[1]) end)"
    )
    full, *others = redis_cluster.masters()
    with full.client() as direct:
        direct.config_set("maxmemory", "1")
        try:
            await route.load_library(library)
        finally:
            direct.config_set("maxmemory", "0")
        assert not direct.function_list(library=name)
    for node in others:
        with node.client() as direct:
            assert direct.function_list(library=name)
    by_master = {master.name: master for master in redis_cluster.masters()}
    for n in range(PARTITIONS):
        key = f"{{p{n}}}:{name}"
        owner = by_master[redis_cluster.master_of_slot(key_slot(key.encode())).name]
        if owner is full:
            with pytest.raises(NoScriptError):
                await route.write(["FCALL", name, "1", key])
        else:
            assert await route.write(["FCALL", name, "1", key]) == 1


async def test_a_pipeline_over_every_node_answers_in_order_with_error_replies_in_place(
    route: ClusterRoute,
) -> None:
    run = uuid.uuid4().hex
    await route.load_library(COUNT_RUNS)
    commands = [[*COUNT, f"{{p{n}}}:{run}"] for n in range(PARTITIONS)]
    commands.insert(3, ["FCALL", "no_such_function", "1", f"{{p9}}:{run}"])
    replies = await route.pipeline(commands, write=True)
    assert replies[:3] + replies[4:] == [1] * PARTITIONS
    assert type(replies[3]).__name__ == "NoScriptError"


async def test_scripts_run_on_a_promoted_replica_without_a_reload(own_cluster: LocalCluster) -> None:
    async with cluster_route(own_cluster, wait_replicas=1, wait_timeout_ms=2000) as route:
        client = route.cluster
        short: list[tuple[int, int]] = []
        route.on_short_wait = lambda asked, acknowledged: short.append((asked, acknowledged))
        key = "{p0}:failover"
        await route.load_library(COUNT_RUNS)
        assert await route.write([*COUNT, key]) == 1
        assert short == []  # the replica has it
        old = own_cluster.master_of_slot(key_slot(key.encode()))
        own_cluster.kill(old)
        new = own_cluster.wait_failover(old)

        async def answered() -> bool:
            try:
                return bool(await route.command(["GET", key]) == b"1")
            except Exception:  # the client meets the dead master once, then reads the new slot map
                return False

        await eventually(answered)
        assert client.get_node_from_key(key).name == new.name
        route.wait_replicas = 0  # the new master has no replica until the old one is back
        assert await route.write([*COUNT, key]) == 2  # replicated: loaded on the masters only


# ---- projectors sharing the partitions ---------------------------------------------------------------


async def test_projectors_share_the_partitions_and_take_over_from_one_that_died(
    cluster: RedisCluster, prefix: str
) -> None:
    keys = RedisKeys(prefix, PARTITIONS)
    first = PartitionLeases(cluster, keys, "first", lease_ms=1000)
    second = PartitionLeases(cluster, keys, "second", lease_ms=1000)
    await first.refresh()
    assert first.owned == set(range(PARTITIONS))
    await second.refresh()  # registered; takes nothing while the first holds everything
    assert second.owned == set()
    await first.refresh()  # two alive: gives back half
    await second.refresh()
    assert len(first.owned) == len(second.owned) == PARTITIONS // 2
    assert first.owned.isdisjoint(second.owned)

    dead = set(first.owned)  # the first dies: no renewal, no release

    async def taken_over() -> bool:
        await second.refresh()
        return second.owned == set(range(PARTITIONS))

    await eventually(taken_over)
    assert dead <= second.owned
    await second.release_all()
    assert await cluster.exists(*[keys.projector_lease(p) for p in range(PARTITIONS)]) == 0


async def outbox_entries_of_deposits(prefix: str, users: range) -> dict[int, list[dict[Any, Any]]]:
    """The outbox entries the deposit script writes (one deposit of 100 per user), by partition: made by the
    scripts on a single fake Redis with the cluster's layout, for copying into the cluster's outboxes."""
    fake = fakeredis.FakeAsyncRedis(server=fakeredis.FakeServer())
    ledger = Ledger(fake, prefix, 3600, partitions=PARTITIONS)
    await ledger.load_scripts()
    for user in users:
        await deposit(ledger, user, 100)
    entries = {p: [fields for _id, fields in await fake.xrange(ledger.keys.outbox(p))] for p in ledger.keys.all()}
    await fake.aclose()
    return entries


async def test_two_projectors_on_the_cluster_share_the_partitions_and_project_each_once(
    settings: Settings, cluster: RedisCluster, mongo_db: Any
) -> None:
    settings = settings.model_copy(update={"projector_enabled": False, "projector_block_ms": 20})
    context = await bootstrap(settings, mongo=mongo_db)
    await context.start()
    projectors = [Projector.from_context(context) for _ in range(2)]
    try:
        keys = context.ledger.keys
        users = range(1, 41)
        for partition, entries in (await outbox_entries_of_deposits(settings.redis_prefix, users)).items():
            for fields in entries:
                await cluster.xadd(keys.outbox(partition), fields)
        for projector in projectors:
            await projector.refresh_leases()  # registered: the first took every partition, the second none
        for projector in projectors:
            await projector.refresh_leases()  # the first gave back half, the second took them
        owned = [projector.leases.owned for projector in projectors if projector.leases is not None]
        assert [len(partitions) for partitions in owned] == [PARTITIONS // 2] * 2
        assert owned[0].isdisjoint(owned[1])

        await asyncio.gather(*(projector.drain(timeout=15) for projector in projectors))
        assert all(projector.entries_acked > 0 for projector in projectors)
        assert sum(projector.transactions_written for projector in projectors) == len(users)
        assert sum(projector.duplicates_skipped for projector in projectors) == 0
        documents = await LedgerStore(context.mongo).largest_ids()
        assert set(documents) == {keys.partition_of(user) for user in users}
        assert await projectors[0].lag() == {"entries": 0, "oldest_age_seconds": 0.0}
    finally:
        for projector in projectors:
            await projector.stop()
        await context.stop()
    assert await cluster.exists(*[keys.projector_lease(p) for p in keys.all()]) == 0  # given back on stop


# ---- waiting for replicas in single mode ------------------------------------------------------------


async def test_a_write_without_its_replicas_in_time_is_answered_and_counted(
    redis_server: RedisServer, prefix: str, tmp_path: Path, mongo_db: Any
) -> None:
    """A Redis with no replica: every WAIT 1 comes back with 0; the deposits are applied and answered as usual
    (the write is done), each counted in billing_redis_wait_short_total, the batch's once per pipeline."""
    settings = Settings(
        redis_url=redis_server.url,
        redis_wait_replicas=1,
        redis_wait_timeout_ms=20,
        tokens=TEST_TOKENS,
        redis_prefix=prefix,
        reports_dir=tmp_path / "reports",
        _env_file=None,
    )
    context = await bootstrap(settings, mongo=mongo_db)
    await context.start()
    try:
        async with served(make_app(context)) as url:
            api = Api(url)
            assert (await api.deposit(1, "5.00")).status == 201
            assert (await api.deposit(1, "2.50")).status == 201
            batch = {"operations": [{"op": "deposit", "user_id": u, "amount": "1.00"} for u in (1, 2, 3)]}
            assert (await api.post("/v1/batch", batch, token="tok-payments")).status == 200
            assert (await api.balance(1)).json["available"] == "8.50"
            metrics = (await api.get("/metrics", token=None)).body.decode()
            api.close()
    finally:
        await context.stop()
    assert "billing_redis_wait_short_total 3.0" in metrics.splitlines()


async def test_a_batch_over_the_partitions_runs_once_and_its_retry_replays(api: Api, ctx: Context) -> None:
    operations: list[dict[str, Any]] = []
    for user in range(30, 60):
        operations.append({"op": "deposit", "user_id": user, "amount": "10.00"})
        operations.append({"op": "withdrawal", "user_id": user, "amount": "1.00"})
    operations.append({"op": "transfer", "from_user_id": 30, "to_user_id": 31, "amount": "2.00"})
    operations.append({"op": "reserve", "user_id": 32, "service_id": 5, "order_id": 1, "amount": "3.00"})
    key = uuid.uuid4().hex
    first = await api.post("/v1/batch", {"operations": operations}, token="tok-admin", key=key)
    assert first.status == 200, first.body
    assert {item["status"] for item in first.json["results"]} == {201}
    again = await api.post("/v1/batch", {"operations": operations}, token="tok-admin", key=key)
    assert again.status == 200 and [i["body"] for i in again.json["results"]] == [
        i["body"] for i in first.json["results"]
    ]
    balances = {u: (await api.balance(u)).json["available"] for u in (30, 31, 32, 33)}
    assert balances == {30: "7.00", 31: "11.00", 32: "6.00", 33: "9.00"}
