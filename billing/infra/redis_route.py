"""Where the ledger's commands go (BILLING_REDIS_MODE): to one Redis through billing/infra/redis_raw.py
(single), or to the node owning their keys through redis-py's cluster client (cluster).

The same promise in both modes: a command is sent at most once. A connection that fails after the command
was sent leaves its outcome unknown, and the caller gets redis-py's ConnectionError or TimeoutError (503, the
client retries with its Idempotency-Key). An error reply is an answer. In cluster mode redis-py follows MOVED
and ASK (the node did not run the command) and is built with no retries (billing/infra/stores.py), so it
never sends a command again after a connection error.

The hot path's own RESP client is single mode only: in cluster mode every command goes through redis-py,
which picks the node from its slot map (docs/operations.md has the cost).

Writes may wait for replicas (BILLING_REDIS_WAIT_REPLICAS): WAIT goes right after the write, on the
connection that wrote it, so it waits for exactly that write.
"""

from __future__ import annotations

import abc
import contextlib
import logging
from collections.abc import Callable, Sequence
from typing import Any, TypeAlias

from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from billing.core.config import default
from billing.infra import redis_raw
from billing.infra.redis_raw import missing_function

log = logging.getLogger("billing.infra.redis_route")

# A client of either mode: what connect_redis() returns.
RedisClient: TypeAlias = Redis | RedisCluster
Parts = Sequence[str]
_LOST = (RedisConnectionError, RedisTimeoutError)
WAIT_TIMEOUT_MS: int = default("redis_wait_timeout_ms")


_KEYS_AFTER_COUNT = frozenset({"FCALL", "FCALL_RO", "EVALSHA", "EVAL"})  # <command> <name> <numkeys> <keys...>


def first_key(parts: Parts) -> str:
    """The key a command is routed by: the first key of FCALL (or EVALSHA, EVAL), else the first argument."""
    return parts[3] if parts[0].upper() in _KEYS_AFTER_COUNT else parts[1]


class Route(abc.ABC):
    """Sends commands of the hot path; one per client. `wait_replicas` > 0: writes wait for that many
    replicas, at most `wait_timeout_ms`; fewer answer as usual (the write is done and applied on the master:
    a 503 would make a client without an Idempotency-Key apply it twice) and are counted by `on_short_wait`."""

    keys_of_any_slot: bool  # whether one command may name keys of different hash slots

    def __init__(self, wait_replicas: int = 0, wait_timeout_ms: int = WAIT_TIMEOUT_MS) -> None:
        self.wait_replicas = wait_replicas
        self.wait_timeout_ms = wait_timeout_ms
        # Called with (replicas asked for, replicas that acknowledged) when a WAIT came back short.
        self.on_short_wait: Callable[[int, int], None] | None = None
        self._short = False  # the last WAIT came back short

    def _wait_parts(self) -> list[str]:
        return ["WAIT", str(self.wait_replicas), str(self.wait_timeout_ms)]

    def _waited(self, acknowledged: Any) -> None:
        """Count a short WAIT; log when writes start and stop coming back short (not each one)."""
        if isinstance(acknowledged, Exception):
            log.warning("WAIT %d failed after a write: %s", self.wait_replicas, acknowledged)
            acknowledged = 0
        short = int(acknowledged) < self.wait_replicas
        if short and self.on_short_wait is not None:
            self.on_short_wait(self.wait_replicas, int(acknowledged))
        if short and not self._short:
            log.warning(
                "writes are answered without %d replicas holding them (a write reached %d within %d ms)",
                self.wait_replicas,
                int(acknowledged),
                self.wait_timeout_ms,
            )
        elif self._short and not short:
            log.warning("writes reach %d replicas again", self.wait_replicas)
        self._short = short

    @abc.abstractmethod
    async def command(self, parts: Parts) -> Any:
        """One command (a read, or a write that needs no WAIT); an error reply raises."""

    async def write(self, parts: Parts) -> Any:
        """One write, then WAIT when configured; an error reply of the write raises."""
        if not self.wait_replicas:
            return await self.command(parts)
        (reply,) = await self.pipeline([parts], write=True)
        if isinstance(reply, Exception):
            raise reply
        return reply

    @abc.abstractmethod
    async def pipeline(self, commands: Sequence[Parts], write: bool = False) -> list[Any]:
        """Every command, answers in order; an error reply is returned as its exception, a lost connection
        raises. `write`: then WAIT on each connection that wrote."""

    @abc.abstractmethod
    async def load_library(self, code: str) -> None:
        """Load a Redis Functions library (FUNCTION LOAD REPLACE: loading one already there changes nothing)
        where its functions may run."""

    def routing(self, parts: Parts) -> dict[str, Any]:
        """What a redis-py pipeline of this client needs besides the command to send it to its node."""
        return {}


class SingleRoute(Route):
    """One Redis, through the hot path's own connection (redis_raw). A write that waits for replicas goes,
    with its WAIT, on a connection of redis-py's pool instead: WAIT blocks its connection, and the hot
    path's one connection carries every other command of the worker."""

    keys_of_any_slot = True  # one script may name keys of several partitions

    def __init__(self, redis: Redis, wait_replicas: int = 0, wait_timeout_ms: int = WAIT_TIMEOUT_MS) -> None:
        super().__init__(wait_replicas, wait_timeout_ms)
        self.redis = redis

    async def command(self, parts: Parts) -> Any:
        return await redis_raw.command(self.redis, redis_raw.pack(parts))

    async def pipeline(self, commands: Sequence[Parts], write: bool = False) -> list[Any]:
        if not (write and self.wait_replicas and commands):
            return await redis_raw.pipeline(self.redis, [redis_raw.pack(parts) for parts in commands])
        # The client has no retries (stores.connect_redis): a lost connection raises, nothing is sent again.
        pipe = self.redis.pipeline(transaction=False)
        for parts in commands:
            pipe.execute_command(*parts)
        pipe.execute_command(*self._wait_parts())
        *replies, acknowledged = await pipe.execute(raise_on_error=False)
        lost = next((reply for reply in replies if isinstance(reply, _LOST)), None)
        if lost is not None:
            raise lost
        self._waited(acknowledged)
        return [missing_function(reply) for reply in replies]

    async def load_library(self, code: str) -> None:
        await self.command(["FUNCTION", "LOAD", "REPLACE", code])


class ClusterRoute(Route):
    """A Redis Cluster, through redis-py's cluster client (built without retries: stores.connect_redis)."""

    keys_of_any_slot = False  # every key of one command in one slot (else CROSSSLOT)

    def __init__(self, cluster: RedisCluster, wait_replicas: int = 0, wait_timeout_ms: int = WAIT_TIMEOUT_MS) -> None:
        super().__init__(wait_replicas, wait_timeout_ms)
        self.cluster = cluster

    async def command(self, parts: Parts) -> Any:
        try:
            await self.cluster.initialize()  # (no-op once the slot map is known) for routing()
            return await self.cluster.execute_command(*parts, **self.routing(parts))
        except ResponseError as exc:
            raise missing_function(exc) from None
        except AttributeError as exc:
            raise closed_under(exc) from exc

    def routing(self, parts: Parts) -> dict[str, Any]:
        """An FCALL goes to the node of its first key by the slot map: redis-py would ask a node which its keys
        are first (COMMAND GETKEYS, one more round trip), as it does only after a MOVED."""
        if parts[0].upper() not in ("FCALL", "FCALL_RO"):
            return {}
        return {"target_nodes": self.cluster.get_node_from_key(first_key(parts))}

    async def pipeline(self, commands: Sequence[Parts], write: bool = False) -> list[Any]:
        """redis-py sends each node its commands on one connection, the nodes at once, and follows MOVED and
        ASK command by command; the WAITs go last on each node that wrote."""
        if not commands:
            return []
        await self.cluster.initialize()  # no-op once the slot map is known
        nodes = {}
        for parts in commands:
            node = self.cluster.get_node_from_key(first_key(parts))
            assert node is not None  # the master: None only for replica=True
            nodes[node.name] = node
        pipe = self.cluster.pipeline()
        for parts in commands:
            pipe.execute_command(*parts, **self.routing(parts))
        waits = list(nodes.values()) if write and self.wait_replicas else []
        for node in waits:
            pipe.execute_command(*self._wait_parts(), target_nodes=node)
        try:
            replies = await pipe.execute(raise_on_error=False)
        except _LOST:
            await self._refresh(nodes.values())
            raise
        except AttributeError as exc:
            await self._refresh(nodes.values())
            raise closed_under(exc) from exc
        lost = next((reply for reply in replies if isinstance(reply, (*_LOST, AttributeError))), None)
        if lost is not None:
            await self._refresh(nodes.values())
            raise closed_under(lost) if isinstance(lost, AttributeError) else lost
        for acknowledged in replies[len(commands) :]:
            self._waited(acknowledged)
        return [missing_function(reply) for reply in replies[: len(commands)]]

    async def _refresh(self, nodes: Any) -> None:
        """After a lost connection: a PING to each node the pipeline used. A node that does not answer makes
        redis-py read the slot map again before its next command (its pipeline does not, with no retries)."""
        for node in nodes:
            with contextlib.suppress(Exception):
                await self.cluster.execute_command("PING", target_nodes=node)

    async def load_library(self, code: str) -> None:
        """On every master: a master replicates FUNCTION LOAD to its replicas (and a new replica gets the library
        with its first sync), so a promoted replica has it. A master that does not load it (down, demoted, out
        of memory) is skipped: it loads the library on its first missing function once it can."""
        await self.cluster.initialize()
        loaded = 0
        for node in self.cluster.get_primaries():
            try:
                await self.cluster.execute_command("FUNCTION", "LOAD", "REPLACE", code, target_nodes=node)
                loaded += 1
            except RedisError as exc:  # down, or refusing it (READONLY: demoted; OOM): the others still load it
                log.warning("could not load the function library on %s: %s", node.name, exc)
        if not loaded:
            raise RedisConnectionError("no master of the Redis Cluster loaded the function library")


def route(redis: RedisClient, wait_replicas: int = 0, wait_timeout_ms: int = WAIT_TIMEOUT_MS) -> Route:
    """The route for a client of either mode."""
    if isinstance(redis, RedisCluster):
        return ClusterRoute(redis, wait_replicas, wait_timeout_ms)
    return SingleRoute(redis, wait_replicas, wait_timeout_ms)


def closed_under(exc: AttributeError) -> RedisConnectionError:
    """redis-py (7.4) answers a ClusterDownError by closing every connection of its cluster client, those in use by
    other commands too; a command then writing or reading on one fails on its stream, now None (AttributeError,
    raised, or in a pipeline's replies). Whether it was sent is unknown: a lost connection, as when the node drops
    it."""
    return RedisConnectionError(f"connection closed under the command by redis-py: {exc}")
