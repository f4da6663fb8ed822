"""The write side: runs the Lua scripts in lua/ against Redis. The only module that knows Redis keys."""

from __future__ import annotations

import hashlib
import secrets
import zlib
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

from redis.asyncio import Redis
from redis.asyncio.client import Pipeline
from redis.exceptions import NoScriptError

from billing.core.config import MAX_PARTITIONS, default
from billing.core.money import MAX_BALANCE_KOPECKS, MAX_OPERATION_KOPECKS
from billing.core.parsing import MAX_ID
from billing.infra import redis_raw
from billing.infra.data_files import data_dir
from billing.infra.redis_route import RedisClient, route
from billing.infra.stores import awaited
from billing.ledger.outcomes import BatchResult, KeyReused, NotRun, Outcome, outcome_from_record

LUA_DIR = data_dir("lua", "_prelude.lua")
# The fields of a partition's totals hash (lua/_prelude.lua TOTAL_FIELDS): kopecks deposited into, withdrawn
# from, recognized as revenue from, and transferred into and out of its accounts.
TOTAL_FIELDS = ("deposited", "withdrawn", "revenue", "transfers_in", "transfers_out")
SCRIPT_NAMES = ("deposit", "withdraw", "transfer", "reserve", "recognize", "cancel", "set_service")
BATCH = "batch"
RESTORE = "restore"  # lua/restore.lua: the writes of `billing rebuild`, see Restore
# Operations per batch script run: a run blocks Redis while it lasts (about 5 µs per deposit), so a
# 1000-operation request becomes 4 runs sent in one pipeline, and other clients wait at most a few ms.
BATCH_CHUNK = 250
# How long a batch's Idempotency-Key stays claimed while the batch runs. A batch takes milliseconds, at worst a
# few Redis timeouts; a worker that died mid-batch leaves its claim to run out, and until then the key answers
# 409 idempotency_key_in_use. Its operations' own records, not this claim, keep a retry from applying twice.
BATCH_CLAIM_TTL_SECONDS = 30


class Idempotency(NamedTuple):
    """Who asked (a token's stable id) and the Idempotency-Key they sent."""

    scope: str
    key: str


class IdempotencyKeyReused(Exception):
    """The Idempotency-Key was used before with another request."""


class IdempotencyKeyInUse(Exception):
    """A request with this Idempotency-Key is still running."""


class BatchClaim(NamedTuple):
    """A batch's hold on its Idempotency-Key while it runs: the record's name and this run's claim value."""

    key: str
    value: str
    fingerprint: str


def batch_scope(idem: Idempotency) -> Idempotency:
    """The batch-level record lives apart from the endpoint keys of the same token."""
    return Idempotency(scope=idem.scope + "/batch", key=idem.key)


def batch_operation_key(idem: Idempotency, index: int) -> Idempotency:
    """The key of the index-th operation of a batch sent with Idempotency-Key (when it names none itself)."""
    # A scope of their own: a batch's own key (any visible ASCII, '#' included) can never name one of these.
    return Idempotency(scope=idem.scope + "/batch-op", key=f"{idem.key}#{index}")


def fingerprint(operation: str, canonical: bytes) -> str:
    return hashlib.sha256(operation.encode() + b"\n" + canonical).hexdigest()


def recorded_fingerprint(fp: str, lang: str) -> str:
    """A script's fingerprint argument: the request's fingerprint, then the language of the answer, which the
    script records with the outcome so that a replay renders exactly as the first answer did (lua/_prelude.lua)."""
    return f"{fp} {lang}"


_PENDING = "pending:"
# Done: the batch's fingerprint alone. Ours: the claim this run wrote, or none left (it ran out).
_COMPLETE_BATCH = """
local v = redis.call('GET', KEYS[1])
if v == ARGV[1] or not v then
  redis.call('SET', KEYS[1], ARGV[2], 'EX', ARGV[3])
end
"""
_RELEASE_BATCH = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
end
"""


def partition_of(user_id: int, partitions: int) -> int:
    """The ledger partition of a user: stable forever (changing it moves users: a migration)."""
    return zlib.crc32(user_id.to_bytes(8, "big")) % partitions


def transaction_partition(txn_id: int) -> int:
    """The partition that issued a transaction id (ids are seq * MAX_PARTITIONS + partition, lua/_prelude.lua)."""
    return txn_id % MAX_PARTITIONS


class PartitionCountChanged(Exception):
    """Redis holds a ledger laid out for another BILLING_PARTITIONS: starting would put users in the wrong
    partitions."""


class RedisKeys:
    """Key names: the only place that knows the ledger's Redis layout.

    Users are spread over `partitions` ledger partitions (partition_of). Every key of partition N starts with
    `<prefix>{pN}:`, one Redis Cluster hash tag, so a partition (its accounts, reservations, sequence and
    clock, totals and outbox streams) is one atomic unit a script can change at once. Global for now, outside
    every partition: idempotency records, the services catalog, console sessions and the partition count.
    """

    def __init__(self, prefix: str, partitions: int = default("partitions")) -> None:
        if not 1 <= partitions <= MAX_PARTITIONS:
            raise ValueError(f"partitions must be 1 .. {MAX_PARTITIONS}, not {partitions}")
        self.prefix = prefix
        self.partitions = partitions
        self.services = f"{prefix}services"
        self.partition_count = f"{prefix}partitions"  # the count this ledger was laid out for (SET NX at start)
        self.projectors = f"{prefix}projectors"  # the projectors alive (billing/projection/leases.py)
        self._tags = [f"{prefix}{{p{p}}}:" for p in range(partitions)]

    def partition_of(self, user_id: int) -> int:
        return partition_of(user_id, self.partitions)

    def all(self) -> range:
        """Every partition number."""
        return range(self.partitions)

    def tag(self, partition: int) -> str:
        """The prefix of every key of a partition, its hash tag included."""
        return self._tags[partition]

    def meta(self, partition: int) -> str:
        """Hash: seq (the partition's last sequence number), clock (its last timestamp in ms)."""
        return self._tags[partition] + "meta"

    def totals(self, partition: int) -> str:
        """Hash: deposited, withdrawn, revenue, transfers_in, transfers_out of the partition's accounts."""
        return self._tags[partition] + "totals"

    def outbox(self, partition: int) -> str:
        return self._tags[partition] + "outbox"

    def outbox_dead(self, partition: int) -> str:
        """Entries the projector could not read, kept for a human."""
        return self._tags[partition] + "outbox:dead"

    def outbox_conflicts(self, partition: int) -> str:
        """Transactions whose id MongoDB already holds with other content (an id used twice), kept for a human."""
        return self._tags[partition] + "outbox:conflicts"

    def projected(self, partition: int) -> str:
        """The partition's history watermark (billing/projection/watermark.py)."""
        return self._tags[partition] + "projected"

    def projector_lease(self, partition: int) -> str:
        """Which projector reads the partition's outbox now (billing/projection/leases.py; cluster mode)."""
        return self._tags[partition] + "projector:lease"

    def account(self, user_id: int) -> str:
        return f"{self._tags[self.partition_of(user_id)]}acct:{user_id}"

    def reservation(self, user_id: int, service_id: int, order_id: int) -> str:
        return f"{self._tags[self.partition_of(user_id)]}resv:{user_id}:{service_id}:{order_id}"

    def user_reservation_pattern(self, user_id: int) -> str:
        """SCAN pattern for every reservation key of one user (glob characters of the prefix escaped)."""
        return f"{glob_escape(self._tags[self.partition_of(user_id)])}resv:{user_id}:*"

    def idempotency(self, idem: Idempotency | None) -> str:
        if idem is None:
            return f"{self.prefix}idem:-"
        digest = hashlib.sha256(idem.key.encode()).hexdigest()
        return f"{self.prefix}idem:{idem.scope}:{digest}"

    def console_session(self, session_digest: str) -> str:
        """A console sign-in (billing/console/session.py): named by the SHA-256 of its id, never the id itself."""
        return f"{self.prefix}console:session:{session_digest}"

    def console_account(self, name: str) -> str:
        """A person's console account (billing/console/accounts.py): one hash per account name."""
        return f"{self.prefix}console:account:{name}"

    def console_account_pattern(self) -> str:
        return f"{self.prefix}console:account:*"

    def console_signin_failures(self, kind: str, value: str) -> str:
        """Failed console sign-ins of one account name or one client address (kind "name" or "addr"), with a TTL."""
        return f"{self.prefix}console:failures:{kind}:{value}"

    def console_audit(self) -> str:
        """The console's audit log: a stream of who looked at which user's money."""
        return f"{self.prefix}console:audit"

    def account_pattern(self) -> str:
        return f"{glob_escape(self.prefix)}{{p*}}:acct:*"

    def reservation_pattern(self) -> str:
        return f"{glob_escape(self.prefix)}{{p*}}:resv:*"

    def account_user_id(self, key: str) -> int:
        """The user id in an account key (the inverse of account())."""
        head, sep, user = key.rpartition(":acct:")
        if not (sep and user.isdigit() and self.account(int(user)) == key):
            raise ValueError(f"not an account key: {key!r}")
        return int(user)


@dataclass(frozen=True)
class Limits:
    """The bounds the scripts enforce, handed to them as Lua locals when their sources are built (defined
    once, in billing/core: a test may build scripts with smaller ones)."""

    max_balance: int = MAX_BALANCE_KOPECKS  # available + reserved of one account
    max_amount: int = MAX_OPERATION_KOPECKS  # one operation's amount
    max_id: int = MAX_ID  # user, service and order ids

    def lua(self) -> str:
        # Lua numbers are doubles: the money bounds must be exact in them; ids stay decimal strings.
        assert 0 < self.max_amount <= self.max_balance < 2**53, self
        return (
            f"local MAX_BALANCE = {self.max_balance}\n"
            f"local MAX_AMOUNT = {self.max_amount}\n"
            f"local MAX_ID = '{self.max_id}'\n"
            f"local ID_SPAN = {MAX_PARTITIONS}\n"
        )


def load_script_sources(limits: Limits = Limits()) -> dict[str, str]:
    """One script per operation (limits + prelude + its file + one call), and the batch script running them all.

    Every operation's logic lives once, in its file under lua/, as a function the prelude's entry points
    call: the single script runs one operation, lua/_batch.lua runs many in one script run.
    """
    prelude = limits.lua() + (LUA_DIR / "_prelude.lua").read_text()
    ops = {name: (LUA_DIR / f"{name}.lua").read_text() for name in SCRIPT_NAMES}
    sources = {name: f"{prelude}\n{ops[name]}\nreturn run_single('{name}')\n" for name in SCRIPT_NAMES}
    sources[BATCH] = "\n".join([prelude, *ops.values(), (LUA_DIR / "_batch.lua").read_text()])
    sources[RESTORE] = f"{prelude}\n{(LUA_DIR / 'restore.lua').read_text()}"
    return sources


class ReservationRecord(NamedTuple):
    """A reservation as `billing rebuild` restores it (recognized_amount: None unless recognized)."""

    user_id: int
    service_id: int
    order_id: int
    amount: int
    status: str
    recognized_amount: int | None
    created_at: int
    updated_at: int


class Restore:
    """The writes of `billing rebuild` (billing/projection/recovery.py), each a call of lua/restore.lua queued on
    a pipeline: the ledger's layout is written by the scripts alone, within the bounds they check."""

    def __init__(self, redis: Redis, keys: RedisKeys, limits: Limits = Limits()) -> None:
        self.redis = redis
        self.keys = keys
        self.source = load_script_sources(limits)[RESTORE]
        self.sha = hashlib.sha1(self.source.encode()).hexdigest()

    async def load(self) -> None:
        """Load the script before queueing calls: a pipeline's EVALSHA is not sent again on NOSCRIPT."""
        self.sha = await self.redis.script_load(self.source)

    def _call(self, pipe: Pipeline, key: str, *args: str | int) -> None:
        pipe.evalsha(self.sha, 1, key, *[str(arg) for arg in args])

    def account(self, pipe: Pipeline, user_id: int, available: int, reserved: int) -> None:
        self._call(pipe, self.keys.account(user_id), "account", available, reserved)

    def reservation(self, pipe: Pipeline, r: ReservationRecord) -> None:
        recognized = "" if r.recognized_amount is None else r.recognized_amount
        key = self.keys.reservation(r.user_id, r.service_id, r.order_id)
        self._call(pipe, key, "reservation", *r[:5], recognized, r.created_at, r.updated_at)

    def totals(self, pipe: Pipeline, partition: int, totals: dict[str, int]) -> None:
        """A partition's totals (every one of TOTAL_FIELDS)."""
        self._call(pipe, self.keys.totals(partition), "totals", *[totals[name] for name in TOTAL_FIELDS])

    def services(self, pipe: Pipeline, names: dict[int, str]) -> None:
        self._call(pipe, self.keys.services, "services", *[part for item in sorted(names.items()) for part in item])

    async def meta(self, partition: int, seq: int, clock: int) -> tuple[int, int]:
        """Raise a partition's sequence and clock to these (never lower them): (seq, clock) now."""
        packed = redis_raw.pack(["EVALSHA", self.sha, "1", self.keys.meta(partition), "meta", str(seq), str(clock)])
        stored_seq, stored_clock = await redis_raw.command(self.redis, packed)
        return int(stored_seq), int(stored_clock)


class Ledger:
    """Money operations, each one atomic Lua script and one Redis round trip."""

    def __init__(
        self,
        redis: RedisClient,
        prefix: str,
        idempotency_ttl_seconds: int,
        limits: Limits = Limits(),
        partitions: int = default("partitions"),
        wait_replicas: int = default("redis_wait_replicas"),
        wait_timeout_ms: int = default("redis_wait_timeout_ms"),
    ) -> None:
        self.redis = redis
        # The scripts and the hot path's reads go by it: to the one Redis, or to the node of their keys.
        self.route = route(redis, wait_replicas, wait_timeout_ms)
        self.keys = RedisKeys(prefix, partitions)
        self.idempotency_ttl = str(idempotency_ttl_seconds)
        self._sources = load_script_sources(limits)
        self._shas = {name: hashlib.sha1(src.encode()).hexdigest() for name, src in self._sources.items()}

    async def load_scripts(self) -> None:
        """Load the scripts wherever they may run (in a Redis Cluster: on every node)."""
        self._shas.update(await self.route.load_scripts(self._sources))

    async def claim_partition_count(self) -> None:
        """Store the partition count on the first start; PartitionCountChanged when Redis holds another."""
        key = self.keys.partition_count
        await self.redis.set(key, str(self.keys.partitions), nx=True)
        stored = await self.redis.get(key)
        if stored is not None and stored.decode() != str(self.keys.partitions):
            raise PartitionCountChanged(
                f"BILLING_PARTITIONS is {self.keys.partitions} but this Redis holds a ledger of {stored.decode()} "
                f"partitions ({key}); set BILLING_PARTITIONS={stored.decode()} (changing it is a migration, "
                "see docs/operations.md)"
            )

    def _partition_keys(self, partition: int) -> list[str]:
        return [self.keys.outbox(partition), self.keys.meta(partition), self.keys.totals(partition)]

    def script_call(
        self, name: str, idem: Idempotency | None, fp: str, keys: list[str], args: list[Any]
    ) -> tuple[str, list[str], list[str]]:
        """(sha, keys, args) of one script call. An operation's args begin with its partition (the ..._call
        methods put it there), whose outbox, meta and totals the script runs on."""
        common_keys = [self.keys.idempotency(idem), *self._partition_keys(int(args[0]))]
        common_args = [fp if idem is not None else "", self.idempotency_ttl]
        return self._shas[name], common_keys + keys, common_args + [str(a) for a in args]

    def batch_command(self, calls: list[tuple[str, Idempotency | None, str, list[str], list[Any]]]) -> list[str]:
        """The EVALSHA of one batch script run (lua/_batch.lua) of (name, idem, fingerprint, keys, args)
        operations, all of one partition, for send_batches."""
        keys = self._partition_keys(int(calls[0][4][0]) if calls else 0)
        args = [self.idempotency_ttl]
        idempotency = self.keys.idempotency
        for name, idem, fp, op_keys, op_args in calls:
            keys.append(idempotency(idem))
            keys.extend(op_keys)
            args.append(name)
            args.append(fp if idem is not None else "")
            # op_args begin with the partition: the batch script checks it is the run's
            args.extend([str(arg) for arg in op_args])
        return ["EVALSHA", self._shas[BATCH], str(len(keys)), *keys, *args]

    async def send_batches(self, commands: list[list[str]]) -> list[Any]:
        """Batch script runs (batch_command) in one pipeline: each run's reply, or its error reply as an
        exception; a lost connection raises (the runs' outcomes are unknown)."""
        return await self.route.pipeline(commands, write=True)

    async def run(self, name: str, idem: Idempotency | None, fp: str, keys: list[str], args: list[Any]) -> Outcome:
        sha, all_keys, all_args = self.script_call(name, idem, fp, keys, args)
        command = ["EVALSHA", sha, str(len(all_keys)), *all_keys, *all_args]
        try:
            reply = await self.route.write(command)
        except NoScriptError:  # the script did not run: safe to send again once loaded
            await self.load_scripts()
            reply = await self.route.write(command)
        return decode_reply(reply)

    # ---- the operations -------------------------------------------------------------------

    # Each returns (script name, keys, args); args begin with the partition the operation runs in (its
    # user's, the sender's for a transfer).

    @staticmethod
    def partitions_of_call(name: str, args: Sequence[Any]) -> frozenset[int]:
        """The partitions a script call of the *_call methods below touches: its first argument's, and a
        transfer's recipient's (its last argument)."""
        if name == "transfer":
            return frozenset((int(args[0]), int(args[-1])))
        return frozenset((int(args[0]),))

    def shared_keys_of_call(self, idem: Idempotency | None, keys: Sequence[str]) -> frozenset[Hashable]:
        """What a call may write outside every partition: its idempotency record (named by its Idempotency,
        which names the record's key, so the key's digest is not computed twice) and the services catalog
        (a reservation's name)."""
        shared: set[Hashable] = {idem} if idem is not None else set()
        if self.keys.services in keys:
            shared.add(self.keys.services)
        return frozenset(shared)

    def deposit_call(self, user_id: int, amount: int, comment: str | None) -> tuple[str, list[str], list[Any]]:
        p = self.keys.partition_of(user_id)
        return "deposit", [self.keys.account(user_id)], [p, user_id, amount, comment or ""]

    def withdraw_call(self, user_id: int, amount: int, comment: str | None) -> tuple[str, list[str], list[Any]]:
        p = self.keys.partition_of(user_id)
        return "withdraw", [self.keys.account(user_id)], [p, user_id, amount, comment or ""]

    def transfer_call(
        self, from_user_id: int, to_user_id: int, amount: int, comment: str | None
    ) -> tuple[str, list[str], list[Any]]:
        p, q = self.keys.partition_of(from_user_id), self.keys.partition_of(to_user_id)
        keys = [self.keys.account(from_user_id), self.keys.account(to_user_id), *self._partition_keys(q)]
        return "transfer", keys, [p, from_user_id, to_user_id, amount, comment or "", q]

    def _reservation_keys(self, user_id: int, service_id: int, order_id: int) -> list[str]:
        return [
            self.keys.account(user_id),
            self.keys.reservation(user_id, service_id, order_id),
            self.keys.services,
        ]

    def reserve_call(
        self, user_id: int, service_id: int, order_id: int, amount: int, service_name: str | None, comment: str | None
    ) -> tuple[str, list[str], list[Any]]:
        keys = self._reservation_keys(user_id, service_id, order_id)
        p = self.keys.partition_of(user_id)
        return "reserve", keys, [p, user_id, service_id, order_id, amount, service_name or "", comment or ""]

    def recognize_call(
        self, user_id: int, service_id: int, order_id: int, amount: int
    ) -> tuple[str, list[str], list[Any]]:
        keys = self._reservation_keys(user_id, service_id, order_id)
        return "recognize", keys, [self.keys.partition_of(user_id), user_id, service_id, order_id, amount]

    def cancel_call(
        self, user_id: int, service_id: int, order_id: int, comment: str | None
    ) -> tuple[str, list[str], list[Any]]:
        keys = self._reservation_keys(user_id, service_id, order_id)
        return "cancel", keys, [self.keys.partition_of(user_id), user_id, service_id, order_id, comment or ""]

    async def claim_batch_key(self, idem: Idempotency, fp: str) -> BatchClaim | None:
        """Hold a batch's Idempotency-Key for this run before any of its operations runs.

        Each operation runs under its own key (its idempotency_key, or one derived from the batch's:
        batch_operation_key), recorded atomically with its money, so a retried batch replays operation by
        operation. The batch's record only answers for the batch as a whole: while a run holds it, 409
        (IdempotencyKeyInUse); once some operation of the batch reached the money, its fingerprint, and
        another batch with the key is 422 (IdempotencyKeyReused). None: that batch is done; run it again,
        its operations replay.
        """
        key = self.keys.idempotency(batch_scope(idem))
        claim = BatchClaim(key, f"{_PENDING}{secrets.token_hex(8)}", fp)
        while not await self.redis.set(key, claim.value, nx=True, ex=BATCH_CLAIM_TTL_SECONDS):
            stored = await self.redis.get(key)
            if stored is None:
                continue  # ran out between the two commands: claim it again
            if stored.startswith(_PENDING.encode()):
                raise IdempotencyKeyInUse()
            if stored.decode() != fp:
                raise IdempotencyKeyReused()
            return None
        return claim

    async def complete_batch_key(self, claim: BatchClaim) -> None:
        """Some operation of the batch reached the money: the key now means this batch (kept as long as the
        operations' records), unless another run claimed it after this run's claim ran out."""
        await awaited(
            self.redis.eval(_COMPLETE_BATCH, 1, claim.key, claim.value, claim.fingerprint, self.idempotency_ttl)
        )

    async def release_batch_key(self, claim: BatchClaim) -> None:
        """No operation of the batch reached the money: leave nothing under the key (if the claim is still ours)."""
        await awaited(self.redis.eval(_RELEASE_BATCH, 1, claim.key, claim.value))

    async def set_service(self, service_id: int, name: str) -> Outcome:
        # a change of the catalog alone goes to partition 0's outbox (a reserve's goes to its user's)
        return await self.run("set_service", None, "", [self.keys.services], [0, service_id, name])

    # ---- reads ------------------------------------------------------------------------------

    async def balance(self, user_id: int) -> tuple[int, int] | None:
        available, reserved = await self.route.command(["HMGET", self.keys.account(user_id), "available", "reserved"])
        if available is None:
            return None
        return int(available), int(reserved or 0)

    async def balances(self, user_ids: Sequence[int]) -> list[tuple[int, int] | None]:
        """balance() of each user, in order, in one round trip (one pipelined write of HMGETs; in a Redis Cluster
        one to each node holding some of them, all at once)."""
        commands = [["HMGET", self.keys.account(user_id), "available", "reserved"] for user_id in user_ids]
        out: list[tuple[int, int] | None] = []
        for reply in await self.route.pipeline(commands):
            if isinstance(reply, Exception):
                raise reply
            available, reserved = reply
            out.append(None if available is None else (int(available), int(reserved or 0)))
        return out

    async def reservation(self, user_id: int, service_id: int, order_id: int) -> dict[str, str] | None:
        raw = await awaited(self.redis.hgetall(self.keys.reservation(user_id, service_id, order_id)))
        if not raw:
            return None
        return {k.decode(): v.decode() for k, v in raw.items()}

    async def user_reservations(
        self, user_id: int, status: str | None = None, limit: int = 200
    ) -> list[dict[str, str]]:
        """A user's reservations (optionally of one status), oldest first, at most `limit`.

        SCAN walks the whole keyspace in steps (cost grows with the number of keys, not with this user's
        reservations); it never blocks Redis, and support looks users up one at a time.
        """
        found: list[dict[str, str]] = []
        async for key in self.redis.scan_iter(match=self.keys.user_reservation_pattern(user_id), count=1000):
            raw = await awaited(self.redis.hgetall(key))
            if not raw:
                continue  # removed between SCAN and HGETALL
            record = {k.decode(): v.decode() for k, v in raw.items()}
            if status is None or record.get("status") == status:
                found.append(record)
        found.sort(key=lambda r: (int(r.get("created_at", 0)), int(r["service_id"]), int(r["order_id"])))
        return found[:limit]

    async def services(self) -> dict[int, str]:
        raw = await awaited(self.redis.hgetall(self.keys.services))
        return {int(k): v.decode() for k, v in raw.items()}

    async def totals(self) -> dict[str, int]:
        """The totals of every partition added up."""
        out: dict[str, int] = {}
        for partition in self.keys.all():
            for field, value in (await self.partition_totals(partition)).items():
                out[field] = out.get(field, 0) + value
        return out

    async def partition_totals(self, partition: int) -> dict[str, int]:
        raw = await awaited(self.redis.hgetall(self.keys.totals(partition)))
        return {k.decode(): int(v) for k, v in raw.items()}


def decode_reply(reply: list[bytes]) -> Outcome:
    """A single script's reply: its outcome; IdempotencyKeyReused when the key was used for another request."""
    kind, payload = reply
    if kind == b"reused":
        raise IdempotencyKeyReused()
    return outcome_from_record(payload, replayed=kind == b"replay")


class BatchOperationFailed(Exception):
    """One operation of a batch script run failed inside Redis: it changed nothing, and stopped the run
    (the operations before it are complete, the ones after it did not run)."""


def decode_batch_reply(reply: list[bytes]) -> list[BatchResult | BatchOperationFailed]:
    """What each operation of a batch script run came to, in order: the failure that stopped the run (it
    changed nothing) for the operation that failed, NotRun(retryable) for the ones after it."""
    out: list[BatchResult | BatchOperationFailed] = []
    for index in range(0, len(reply), 2):
        kind, payload = reply[index], reply[index + 1]
        if kind == b"error":
            out.append(BatchOperationFailed(payload.decode(errors="replace")))
        elif kind == b"skipped":
            out.append(NotRun(retryable=True))
        elif kind == b"reused":
            out.append(KeyReused())
        else:
            out.append(outcome_from_record(payload, replayed=kind == b"replay"))
    return out


def glob_escape(text: str) -> str:
    """Escape Redis glob metacharacters so a literal prefix matches only itself."""
    return "".join("\\" + ch if ch in "*?[]\\" else ch for ch in text)
