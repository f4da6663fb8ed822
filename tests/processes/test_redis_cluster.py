"""A real Redis Cluster (tests/support/redis_cluster.py) and what redis-py's public cluster client does on it:
slots and hash tags, scripts loaded on every primary, CROSSSLOT, pipelines over several nodes, failover after a
SIGKILL, and which commands the client sends again by itself (what the partitioned ledger of issue 14 builds on)."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.cluster import RedisCluster as SyncRedisCluster
from redis.crc import key_slot
from redis.exceptions import ClusterCrossSlotError, MovedError, NoScriptError, RedisClusterException
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.retry import Retry as SyncRetry

from tests.support.proxy import ReplyDroppingProxy
from tests.support.redis_cluster import LocalCluster, LocalNode

TAGS = [f"{{p{n}}}" for n in range(16)]

# Counts its runs in KEYS[1] and answers them with the port of the node that ran it.
COUNT_RUNS = """
local runs = redis.call('INCR', KEYS[1])
local port = string.match(redis.call('INFO', 'server'), 'tcp_port:(%d+)')
return {runs, tonumber(port)}
"""

# Counts its runs in KEYS[1] and answers 0: a reply redis-py's pipeline takes for "not answered yet".
COUNT_RUNS_ANSWER_ZERO = "redis.call('INCR', KEYS[1]) return 0"


def never_resend() -> Retry:
    """The retry policy under which the cluster client sends a command at most once."""
    return Retry(NoBackoff(), 0)


@pytest.fixture
def run() -> str:
    """Part of every key of a test, so tests sharing the session's cluster never meet."""
    return uuid.uuid4().hex[:8]


@pytest.fixture
async def client(redis_cluster: LocalCluster) -> AsyncIterator[RedisCluster]:
    client = RedisCluster.from_url(redis_cluster.url, decode_responses=True)
    yield client
    await client.aclose()


def slot_of(key: str) -> int:
    return key_slot(key.encode())


def test_the_cluster_has_three_masters_each_with_one_replica(redis_cluster: LocalCluster) -> None:
    masters, replicas = redis_cluster.masters(), redis_cluster.replicas()
    assert len(masters) == 3 and len(replicas) == 3
    for master in masters:
        (replica,) = redis_cluster.replicas_of(master)
        with replica.client() as direct:
            replication = direct.info("replication")
        assert replication["role"] == "slave" and replication["master_port"] == master.port
    sync_client = SyncRedisCluster.from_url(redis_cluster.url)
    try:
        assert {node.name for node in sync_client.get_primaries()} == {node.name for node in masters}
        assert {node.name for node in sync_client.get_replicas()} == {node.name for node in replicas}
    finally:
        sync_client.close()


async def test_hash_tags_spread_the_partitions_over_every_master(
    redis_cluster: LocalCluster, client: RedisCluster, run: str
) -> None:
    per_master: dict[int, list[str]] = {}
    for tag in TAGS:
        key = f"{tag}:{run}"
        await client.set(key, tag)
        owner = redis_cluster.master_of_slot(slot_of(key))
        assert client.get_node_from_key(key).name == owner.name
        with owner.client() as direct:
            assert direct.get(key) == tag  # stored on the master the client chose
        per_master.setdefault(owner.port, []).append(tag)
    assert set(per_master) == {master.port for master in redis_cluster.masters()}
    # redis-cli splits the slots evenly in three ranges; {p0}..{p15} fall 4, 5 and 7 into them.
    assert sorted(len(tags) for tags in per_master.values()) == [4, 5, 7]


async def test_a_script_loaded_on_every_primary_runs_on_the_node_owning_its_keys(
    redis_cluster: LocalCluster, client: RedisCluster, run: str
) -> None:
    sha = await client.execute_command("SCRIPT LOAD", COUNT_RUNS, target_nodes=RedisCluster.PRIMARIES)
    for master in redis_cluster.masters():
        with master.client() as direct:
            assert direct.script_exists(sha) == [True]
    for tag in TAGS:
        key = f"{tag}:{run}:runs"
        assert await client.evalsha(sha, 1, key) == [1, redis_cluster.master_of_slot(slot_of(key)).port]


async def test_a_script_on_keys_of_two_tags_is_refused(client: RedisCluster, run: str) -> None:
    sha = await client.script_load(COUNT_RUNS)
    first, second = f"{{p0}}:{run}", f"{{p1}}:{run}"
    with pytest.raises(RedisClusterException, match="all keys must map to the same key slot"):
        await client.evalsha(sha, 2, first, second)  # redis-py refuses before sending anything
    owner = client.get_node_from_key(first)
    with pytest.raises(ClusterCrossSlotError):  # and so does the node: CROSSSLOT
        await client.execute_command("EVALSHA", sha, 2, first, second, target_nodes=owner)
    assert await client.exists(first) == 0 and await client.exists(second) == 0


async def test_a_pipeline_over_several_nodes_answers_in_order(
    redis_cluster: LocalCluster, client: RedisCluster, run: str
) -> None:
    sha = await client.script_load(COUNT_RUNS)
    with pytest.raises(RedisClusterException, match="evalsha is blocked"):
        client.pipeline().evalsha(sha, 1, f"{{p0}}:{run}")  # the method; execute_command("EVALSHA", ...) is not
    pipe = client.pipeline()
    expected: list[Any] = []
    for n, tag in enumerate(TAGS):
        pipe.incrby(f"{tag}:{run}:n", n + 1)
        pipe.execute_command("EVALSHA", sha, 1, f"{tag}:{run}:runs")
        pipe.get(f"{tag}:{run}:n")
        expected += [n + 1, [1, redis_cluster.master_of_slot(slot_of(tag)).port], str(n + 1)]
    assert await pipe.execute() == expected


async def test_a_killed_master_is_replaced_by_its_replica_and_writes_go_on(own_cluster: LocalCluster) -> None:
    key = "{p0}:failover"
    client = RedisCluster.from_url(own_cluster.url, decode_responses=True)
    try:
        on_primaries = await client.execute_command("SCRIPT LOAD", COUNT_RUNS, target_nodes=RedisCluster.PRIMARIES)
        on_all = await client.execute_command(
            "SCRIPT LOAD", COUNT_RUNS_ANSWER_ZERO, target_nodes=RedisCluster.ALL_NODES
        )
        old_master = own_cluster.master_of_slot(slot_of(key))
        pipe = client.pipeline()
        pipe.execute_command("EVALSHA", on_primaries, 1, key)
        pipe.execute_command("WAIT", 1, 5000, target_nodes=client.get_node_from_key(key))
        assert await pipe.execute() == [[1, old_master.port], 1]  # the replica has the count
        replicas = own_cluster.replicas_of(old_master)

        # A client that never re-sends meets the dead master once (connection refused: the command never left),
        # and marks its slot map for a rebuild that the next command makes.
        once = RedisCluster.from_url(own_cluster.url, retry=never_resend(), decode_responses=True)
        try:
            await once.get(key)  # its map now names the old master
            started = time.monotonic()
            own_cluster.kill(old_master)
            new_master = own_cluster.wait_failover(old_master, timeout=15)
            took = time.monotonic() - started
            with pytest.raises(RedisConnectionError):
                await once.get(key)
            assert await once.get(key) == "1"
        finally:
            await once.aclose()
        assert new_master in replicas
        assert took < 15
        print(f"failover after SIGKILL: {took:.2f} s")

        # The client still knows the dead master: its default retries rebuild the slot map and write there.
        assert await client.incr(key) == 2
        new_node = client.get_node_from_key(key)
        assert new_node.name == new_master.name
        # SCRIPT LOAD is not replicated: a script loaded on the primaries only is missing on the promoted replica
        # (NOSCRIPT: it did not run); one loaded on every node runs there.
        with pytest.raises(NoScriptError):
            await client.evalsha(on_primaries, 1, key)
        assert await client.evalsha(on_all, 1, key) == 0
        # redis-py 7.4.1 keeps the promoted node in its node list as a replica (NodesManager.set_nodes keeps the
        # old ClusterNode, server type included), so PRIMARIES leaves it out; the key's node is reached.
        assert new_master.name not in {node.name for node in client.get_primaries()}
        await client.execute_command("SCRIPT LOAD", COUNT_RUNS, target_nodes=RedisCluster.PRIMARIES)
        with pytest.raises(NoScriptError):
            await client.evalsha(on_primaries, 1, key)
        await client.execute_command("SCRIPT LOAD", COUNT_RUNS, target_nodes=new_node)
        assert await client.evalsha(on_primaries, 1, key) == [4, new_master.port]  # the 0-script counted too

        own_cluster.restart(old_master)
        assert old_master in own_cluster.replicas_of(new_master)
    finally:
        await client.aclose()


# What redis-py's asyncio cluster client sends again by itself.


@contextlib.asynccontextmanager
async def behind_proxy(
    cluster: LocalCluster, key: str, **options: Any
) -> AsyncIterator[tuple[RedisCluster, ReplyDroppingProxy]]:
    """A cluster client that reaches the master of `key` through a reply-dropping proxy (the rest directly):
    `address_remap` turns the node's address from CLUSTER SLOTS into the proxy's."""
    owner = cluster.master_of_slot(slot_of(key))
    proxy = await ReplyDroppingProxy(owner.port).start()

    def remap(address: tuple[str, int]) -> tuple[str, int]:
        return ("127.0.0.1", proxy.port) if address[1] == owner.port else address

    entry = next(master for master in cluster.masters() if master is not owner)
    client = RedisCluster(host="127.0.0.1", port=entry.port, address_remap=remap, decode_responses=True, **options)
    try:
        yield client, proxy
    finally:
        await client.aclose()
        await proxy.close()


async def test_the_default_client_runs_a_script_again_when_its_reply_is_lost(
    redis_cluster: LocalCluster, run: str
) -> None:
    key = f"{{p2}}:{run}:lost"
    async with behind_proxy(redis_cluster, key) as (client, proxy):
        sha = await client.script_load(COUNT_RUNS)
        proxy.arm(key.encode())
        runs, _ = await client.evalsha(sha, 1, key)
        assert proxy.dropped == 1
        assert runs == 2  # it ran, its reply was lost, the client sent it again and it ran again


@pytest.mark.parametrize(
    "options",
    [{"retry": never_resend()}, {"cluster_error_retry_attempts": 0}],
    ids=["retry=Retry(NoBackoff(), 0)", "cluster_error_retry_attempts=0"],
)
async def test_a_client_without_retries_sends_a_script_once(
    redis_cluster: LocalCluster, run: str, options: dict[str, Any]
) -> None:
    key = f"{{p2}}:{run}:once"
    async with behind_proxy(redis_cluster, key, **options) as (client, proxy):
        sha = await client.script_load(COUNT_RUNS)
        proxy.arm(key.encode())
        with pytest.raises(RedisConnectionError):
            await client.evalsha(sha, 1, key)
        assert proxy.dropped == 1
        assert await client.get(key) == "1"  # ran once; the caller decides about a retry


def test_connection_error_retry_attempts_is_no_argument_of_the_client() -> None:
    with pytest.raises(TypeError, match="connection_error_retry_attempts"):
        RedisCluster(host="127.0.0.1", port=1, connection_error_retry_attempts=0)


def _set_slot(nodes: list[LocalNode], slot: int, *args: str) -> None:
    for node in nodes:
        with node.client() as direct:
            direct.execute_command("CLUSTER", "SETSLOT", slot, *args)


def _move_slot(cluster: LocalCluster, slot: int, source: LocalNode, target: LocalNode) -> None:
    """Give an empty slot to `target` the way redis-cli's reshard does (importing, migrating, then owner)."""
    _set_slot([target], slot, "IMPORTING", source.node_id)
    _set_slot([source], slot, "MIGRATING", target.node_id)
    _set_slot(
        [target, source, *(m for m in cluster.masters() if m not in (source, target))], slot, "NODE", target.node_id
    )


@contextlib.contextmanager
def slot_given_back(cluster: LocalCluster, slot: int) -> Iterator[LocalNode]:
    """Yields the slot's master; afterwards the slot is empty, stable and on that master again."""
    source = cluster.master_of_slot(slot)
    try:
        yield source
    finally:
        owner = cluster.master_of_slot(slot)
        with owner.client() as direct:
            keys = direct.cluster("GETKEYSINSLOT", slot, 1000)
            if keys:
                direct.delete(*keys)
        if owner is not source:
            _move_slot(cluster, slot, owner, source)
        _set_slot(cluster.masters(), slot, "STABLE")
        cluster.wait_ok()


async def test_a_client_without_retries_still_follows_ask_and_moved(redis_cluster: LocalCluster, run: str) -> None:
    key = f"{{moving}}:{run}"
    slot = slot_of(key)
    client = RedisCluster.from_url(redis_cluster.url, retry=never_resend(), decode_responses=True)
    try:
        with slot_given_back(redis_cluster, slot) as source:
            sha = await client.script_load(COUNT_RUNS)
            assert client.get_node_from_key(key).name == source.name
            target = next(master for master in redis_cluster.masters() if master is not source)

            _set_slot([target], slot, "IMPORTING", source.node_id)
            _set_slot([source], slot, "MIGRATING", target.node_id)
            # The source lacks the key: it answers ASK (not run), the client sends ASKING + EVALSHA to the target.
            assert await client.evalsha(sha, 1, key) == [1, target.port]
            assert client.get_node_from_key(key).name == source.name  # ASK leaves the slot map as it was

            others = [m for m in redis_cluster.masters() if m not in (source, target)]
            _set_slot([target, source, *others], slot, "NODE", target.node_id)
            # The source answers MOVED (not run); the client moves the slot in its map and sends it to the target.
            assert await client.evalsha(sha, 1, key) == [2, target.port]
            assert client.get_node_from_key(key).name == target.name
    finally:
        await client.aclose()


@pytest.mark.parametrize("retry", ["default", "never"])
async def test_a_pipeline_with_a_lost_reply(redis_cluster: LocalCluster, run: str, retry: str) -> None:
    """One node's connection breaks after the pipeline reached it. With the default retries the pipeline is sent
    again for every command whose answer is an error or falsy (0, "", nil), on every node; without, it raises."""
    lost, healthy = f"{{p2}}:{run}", f"{{p0}}:{run}"
    assert redis_cluster.master_of_slot(slot_of(lost)) is not redis_cluster.master_of_slot(slot_of(healthy))
    options = {"retry": never_resend()} if retry == "never" else {}
    async with behind_proxy(redis_cluster, lost, **options) as (client, proxy):
        zero = await client.script_load(COUNT_RUNS_ANSWER_ZERO)
        pipe = client.pipeline()
        pipe.incr(f"{lost}:n")
        pipe.incr(f"{healthy}:n")
        pipe.execute_command("EVALSHA", zero, 1, f"{healthy}:zero")
        proxy.arm(f"{lost}:n".encode())
        if retry == "default":
            assert await pipe.execute() == [2, 1, 0]
            # Both commands answered 0 or an error ran twice, the healthy node's one included.
            assert await client.get(f"{lost}:n") == "2"
            assert await client.get(f"{healthy}:zero") == "2"
        else:
            with pytest.raises(RedisConnectionError):
                await pipe.execute()
            assert await client.get(f"{lost}:n") == "1"
            assert await client.get(f"{healthy}:zero") == "1"
        assert await client.get(f"{healthy}:n") == "1"
        assert proxy.dropped == 1

        # raise_on_error=False: never sent again, the broken node's answers are its errors, in their places.
        pipe = client.pipeline()
        pipe.incr(f"{lost}:n")
        pipe.incr(f"{healthy}:n")
        proxy.arm(f"{lost}:n".encode())
        broken, fine = await pipe.execute(raise_on_error=False)
        assert isinstance(broken, RedisConnectionError) and fine == 2


async def test_wait_counts_the_writes_of_its_own_connection(redis_cluster: LocalCluster, run: str) -> None:
    """WAIT in the same pipeline as the script, to the script's node, waits for that script's write; on another
    connection (one that wrote nothing) it answers at once whatever the replica has."""
    key = f"{{p3}}:{run}"
    client = RedisCluster.from_url(redis_cluster.url, retry=never_resend(), decode_responses=True)
    try:
        sha = await client.script_load(COUNT_RUNS)
        master = redis_cluster.master_of_slot(slot_of(key))
        (replica,) = redis_cluster.replicas_of(master)
        node = client.get_node_from_key(key)

        async def script_then_wait(timeout_ms: int) -> list[Any]:
            pipe = client.pipeline()
            pipe.execute_command("EVALSHA", sha, 1, key)
            pipe.execute_command("WAIT", 1, timeout_ms, target_nodes=node)
            return await pipe.execute()

        assert (await script_then_wait(5000))[1] == 1
        redis_cluster.pause(replica)  # shorter than cluster-node-timeout: nobody fails it over
        try:
            started = time.monotonic()
            (runs, _), acknowledged = await script_then_wait(200)
            assert runs == 2 and acknowledged == 0  # the stopped replica never acknowledged this write
            assert time.monotonic() - started >= 0.2
            with master.client() as other_connection:
                assert other_connection.execute_command("WAIT", 1, 200) == 1  # wrote nothing: nothing to wait for
        finally:
            redis_cluster.resume(replica)
        assert (await script_then_wait(5000))[1] == 1
    finally:
        await client.aclose()


def test_a_plain_client_of_one_node_is_redirected(redis_cluster: LocalCluster, run: str) -> None:
    """A non-cluster client sees MOVED as an error: only the cluster client follows it."""
    key = f"{{p0}}:{run}"
    owner = redis_cluster.master_of_slot(slot_of(key))
    other = next(master for master in redis_cluster.masters() if master is not owner)
    with other.client() as direct, pytest.raises(MovedError, match=f"^{slot_of(key)} 127.0.0.1:{owner.port}$"):
        direct.set(key, "1")


@contextlib.contextmanager
def proxy_in_a_thread(upstream_port: int) -> Iterator[ReplyDroppingProxy]:
    """A ReplyDroppingProxy on an event loop of its own thread, for a synchronous client."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    proxy = asyncio.run_coroutine_threadsafe(ReplyDroppingProxy(upstream_port).start(), loop).result(5)

    async def close() -> None:
        await proxy.close()
        connections = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
        for task in connections:
            task.cancel()
        await asyncio.gather(*connections, return_exceptions=True)

    try:
        yield proxy
    finally:
        asyncio.run_coroutine_threadsafe(close(), loop).result(5)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        loop.close()


def test_the_sync_pipeline_sends_again_after_a_lost_reply_whatever_its_retries(
    redis_cluster: LocalCluster, run: str
) -> None:
    """redis.cluster.ClusterPipeline, even with no retries: a connection error counts for every command of that
    node, answered or not, and each is sent again on its own (its execute() has no allow_redirections to stop it)."""
    lost = f"{{p2}}:{run}"
    owner = redis_cluster.master_of_slot(slot_of(lost))
    entry = next(master for master in redis_cluster.masters() if master is not owner)
    with proxy_in_a_thread(owner.port) as proxy:

        def remap(address: tuple[str, int]) -> tuple[str, int]:
            return ("127.0.0.1", proxy.port) if address[1] == owner.port else address

        client = SyncRedisCluster(
            host="127.0.0.1",
            port=entry.port,
            address_remap=remap,
            retry=SyncRetry(NoBackoff(), 0),
            decode_responses=True,
        )
        try:
            pipe = client.pipeline()
            pipe.incr(f"{lost}:a")
            pipe.incr(f"{lost}:b")
            proxy.arm(f"{lost}:a".encode())
            assert pipe.execute() == [2, 2]  # both ran twice
            assert proxy.dropped == 1
        finally:
            client.close()
