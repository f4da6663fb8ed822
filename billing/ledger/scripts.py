"""The write side: runs the Lua scripts in lua/ against Redis. The only module that knows Redis keys."""

from __future__ import annotations

import functools
import hashlib
import secrets
import zlib
from collections.abc import Awaitable, Callable, Hashable, Sequence
from dataclasses import dataclass, replace
from typing import Any, NamedTuple

import orjson
from redis.asyncio.client import Pipeline as RedisPipeline
from redis.asyncio.cluster import ClusterPipeline
from redis.exceptions import NoScriptError

from billing.core.config import MAX_PARTITIONS, default
from billing.core.money import MAX_BALANCE_KOPECKS, MAX_OPERATION_KOPECKS
from billing.core.parsing import MAX_EXPIRES_IN, MAX_ID
from billing.infra.data_files import data_dir
from billing.infra.redis_route import RedisClient, route
from billing.infra.stores import awaited
from billing.ledger.outcomes import (
    Applied,
    BatchResult,
    InTransit,
    KeyReused,
    NotRun,
    Outcome,
    outcome_from_record,
    script_result,
)

LUA_DIR = data_dir("lua", "_prelude.lua")
# The fields of a partition's totals hash (lua/_prelude.lua TOTAL_FIELDS): kopecks deposited into, withdrawn
# from, recognized as revenue from, transferred into and out of its accounts, given back to its senders by
# reversed transfers, and refunded to its accounts out of recognized revenue.
TOTAL_FIELDS = (
    "deposited",
    "withdrawn",
    "revenue",
    "transfers_in",
    "transfers_out",
    "transfers_reversed",
    "refunded",
)
# A transfer between partitions: debit in the sender's, credit in the recipient's, settle in the sender's.
DEBIT, CREDIT, SETTLE = "transfer_debit", "transfer_credit", "transfer_settle"
SCRIPT_NAMES = (
    "deposit",
    "withdraw",
    "transfer",
    "reserve",
    "recognize",
    "cancel",
    "refund",
    "expire",
    "set_service",
    DEBIT,
    CREDIT,
    SETTLE,
)
BATCH = "batch"
RESTORE = "restore"  # lua/restore.lua: the writes of `billing rebuild`, see Restore
EXPIRY_READ = "expiry_read"  # lua/expiry_read.lua: the partition's time, and its due reservations
# Operations per batch run: a run blocks Redis while it lasts (about 5 µs per deposit), so a
# 1000-operation request becomes 4 runs sent in one pipeline, and other clients wait at most a few ms.
BATCH_CHUNK = 250
# A run appends its transactions of a partition to the outbox this many to an entry at most: one XADD for many
# transactions is most of a batch run's saving in Redis, and the bound keeps what one projector read converts
# (BILLING_PROJECTOR_BATCH entries) while it holds its worker's event loop near a single batch request's work.
OUTBOX_ENTRY_TXNS = 10
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

# An operation's idempotency pointer (RedisKeys.idempotency_record), claimed on its own where one script
# cannot name keys of two partitions (Redis Cluster), before the operation runs: 'reused' when the key's
# home holds another request's fingerprint, else 'ok' (written now, or already this request's). The
# layout that lua/_prelude.lua's idempotency_entry() reads: '<fingerprint>\n@<record's partition>'.
#   KEYS[1] the pointer;  ARGV[1] fingerprint;  ARGV[2] the record's partition;  ARGV[3] TTL in seconds
_CLAIM_POINTER = """
local stored = redis.call('GET', KEYS[1])
if not stored then
  redis.call('SET', KEYS[1], ARGV[1] .. '\\n@' .. ARGV[2], 'EX', ARGV[3])
  return 'ok'
end
local sep = string.find(stored, '\\n', 1, true)
if not sep then
  return redis.error_reply('ledger: idempotency record ' .. KEYS[1] .. ' has no fingerprint')
end
if string.sub(stored, 1, sep - 1) ~= ARGV[1] then
  return 'reused'
end
return 'ok'
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


def _hash_reply(reply: Any) -> dict[str, str]:
    """An HGETALL reply of either route: the flat field, value list of the single route's own RESP client, or
    the dict redis-py's cluster client makes of it."""
    if isinstance(reply, dict):
        return {_text(k): _text(v) for k, v in reply.items()}
    return {_text(reply[i]): _text(reply[i + 1]) for i in range(0, len(reply), 2)}


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class PartitionCountChanged(Exception):
    """Redis holds a ledger laid out for another BILLING_PARTITIONS: starting would put users in the wrong
    partitions."""


class RedisKeys:
    """Key names: the only place that knows the ledger's Redis layout.

    Users are spread over `partitions` ledger partitions (partition_of). Every key of partition N starts with
    `<prefix>{pN}:`, one Redis Cluster hash tag, so a partition (its accounts, reservations, sequence and
    clock, totals, outbox streams, idempotency records and services catalog) is one atomic unit a script can
    change at once. Outside every partition: console sessions, the partition count and the webhooks.

    An Idempotency-Key has a home partition (idempotency_home, a hash of its digest), where a key reused for a
    user of any partition is found (idempotency_record). Where one script may name keys of any slot (one Redis:
    records_at_home), an operation's record lives at its key's home, the one key a script may write outside its
    partitions. Under Redis Cluster it lives in its user's partition (the sender's for a transfer), and when
    that is not the key's home, a pointer holding only its fingerprint is claimed at the home first
    (Ledger.claim_pointers).
    """

    def __init__(self, prefix: str, partitions: int = default("partitions"), records_at_home: bool = True) -> None:
        if not 1 <= partitions <= MAX_PARTITIONS:
            raise ValueError(f"partitions must be 1 .. {MAX_PARTITIONS}, not {partitions}")
        self.prefix = prefix
        self.partitions = partitions
        self.records_at_home = records_at_home
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
        """Hash: TOTAL_FIELDS (deposited, withdrawn, revenue, transfers_in, ...) of the partition's accounts."""
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
        """Which projector reads the partition's outbox now (billing/projection/leases.py)."""
        return self._tags[partition] + "projector:lease"

    def account(self, user_id: int) -> str:
        return self.account_in(self.partition_of(user_id), user_id)

    def account_in(self, partition: int, user_id: int) -> str:
        """account() of a user whose partition (partition_of) the caller has already."""
        return f"{self._tags[partition]}acct:{user_id}"

    def transits(self, partition: int) -> str:
        """Hash: transfer id -> transit JSON of the partition's transfers to other partitions whose debit is
        done and whose settlement is not (lua/transfer_debit.lua)."""
        return self._tags[partition] + "transits"

    def credited(self, partition: int, transfer_id: int) -> str:
        """String: what the credit of a transfer from another partition came to (lua/transfer_credit.lua)."""
        return f"{self._tags[partition]}credited:{transfer_id}"

    def settled(self, partition: int, transfer_id: int) -> str:
        """String: the final outcome of a transfer of the partition's sender (lua/transfer_settle.lua)."""
        return f"{self._tags[partition]}settled:{transfer_id}"

    def reservation(self, user_id: int, service_id: int, order_id: int) -> str:
        return f"{self._tags[self.partition_of(user_id)]}resv:{user_id}:{service_id}:{order_id}"

    def expiry(self, partition: int) -> str:
        """Sorted set: the partition's reservations still reserved, member `user:service:order` (expiry_ref), score
        their deadline (expires_at, ms). reserve adds; recognize, cancel and expire remove (lua/expire.lua)."""
        return self._tags[partition] + "expiry"

    @staticmethod
    def expiry_ref(member: bytes | str) -> tuple[int, int, int]:
        """(user_id, service_id, order_id) of a member of an expiry index."""
        text = member.decode() if isinstance(member, bytes) else member
        user_id, service_id, order_id = (int(part) for part in text.split(":"))
        return user_id, service_id, order_id

    def user_reservation_pattern(self, user_id: int) -> str:
        """SCAN pattern for every reservation key of one user (glob characters of the prefix escaped)."""
        return f"{glob_escape(self._tags[self.partition_of(user_id)])}resv:{user_id}:*"

    def services(self, partition: int) -> str:
        """Hash: the catalog as the partition's scripts know it: service_id -> name, and at:<service_id> -> the
        partition's clock (ms) when it named the service (Ledger.services() merges the partitions: latest wins)."""
        return self._tags[partition] + "services"

    def idempotency_home(self, idem: Idempotency) -> tuple[int, str]:
        """The home partition of an Idempotency-Key and the name of its records (scope and key digest)."""
        digest = hashlib.sha256(idem.key.encode()).hexdigest()
        return int(digest[:16], 16) % self.partitions, f"idem:{idem.scope}:{digest}"

    def idempotency(self, idem: Idempotency) -> str:
        """The key's record in its home partition: an operation's record or pointer, a batch's claim."""
        home, name = self.idempotency_home(idem)
        return self._tags[home] + name

    def idempotency_record(self, idem: Idempotency | None, partition: int) -> tuple[str, str | None]:
        """(record, pointer) of an operation of `partition` under idem: its record (at the key's home where
        records_at_home, else in that partition) and the pointer key in the key's home partition, None when the
        record is at the home. With no key: a name the script never reads nor writes, in the partition."""
        if idem is None:
            return self._tags[partition] + "idem:-", None
        home, name = self.idempotency_home(idem)
        if self.records_at_home or home == partition:
            return self._tags[home] + name, None
        return self._tags[partition] + name, self._tags[home] + name

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

    # Webhooks (billing/webhooks/): every webhook key carries the one hash tag {webhooks}, so that the set of
    # names and each webhook's keys change together in one script under Redis Cluster. A webhook writes them
    # once per delivered batch, so one slot carries all of them easily.

    def webhooks(self) -> str:
        """Set: the names of the webhooks."""
        return f"{self.prefix}{{webhooks}}:names"

    def webhook(self, name: str) -> str:
        """Hash: a webhook's definition (url, types, secret, created_at) and delivery state (position, the batch
        in flight, attempts, times, last error)."""
        return f"{self.prefix}{{webhooks}}:hook:{name}"

    def webhook_lease(self, name: str) -> str:
        """Which dispatcher delivers the webhook now (SET NX PX with its token, renewed while it lives)."""
        return f"{self.prefix}{{webhooks}}:lease:{name}"

    def account_pattern(self) -> str:
        return f"{glob_escape(self.prefix)}{{p*}}:acct:*"

    def reservation_pattern(self) -> str:
        return f"{glob_escape(self.prefix)}{{p*}}:resv:*"

    def partition_of_key(self, key: str) -> int:
        """The partition a key of the ledger belongs to: the number in its hash tag."""
        rest = key[len(self.prefix) :] if key.startswith(self.prefix) else ""
        end = rest.find("}")
        if not (rest.startswith("{p") and end > 2 and rest[2:end].isdigit()):
            raise ValueError(f"not a key of a ledger partition: {key!r}")
        return int(rest[2:end])

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
    max_expires_in: int = MAX_EXPIRES_IN  # a reservation's expires_in (seconds)

    def lua(self) -> str:
        # Lua numbers are doubles: the money bounds must be exact in them; ids stay decimal strings.
        assert 0 < self.max_amount <= self.max_balance < 2**53, self
        return (
            f"local MAX_BALANCE = {self.max_balance}\n"
            f"local MAX_AMOUNT = {self.max_amount}\n"
            f"local MAX_ID = '{self.max_id}'\n"
            f"local ID_SPAN = {MAX_PARTITIONS}\n"
            f"local OUTBOX_ENTRY_TXNS = {OUTBOX_ENTRY_TXNS}\n"
            f"local MAX_EXPIRES_IN = {self.max_expires_in}\n"
        )


@dataclass(frozen=True)
class Library:
    """The ledger's Redis Functions library: its code (FUNCTION LOAD) and the function FCALL calls for each
    entry point (an operation of SCRIPT_NAMES, BATCH, RESTORE, EXPIRY_READ)."""

    name: str
    code: str
    functions: dict[str, str]

    def call(self, entry: str, keys: Sequence[str], args: Sequence[str]) -> list[str]:
        """The FCALL of one entry point."""
        return ["FCALL", self.functions[entry], str(len(keys)), *keys, *args]


# The entry points whose files are a function's body (each returns the function's reply), and the read-only one.
_BODIES = {BATCH: "_batch.lua", RESTORE: "restore.lua", EXPIRY_READ: "expiry_read.lua"}
_READ_ONLY = frozenset({EXPIRY_READ})


@functools.cache
def build_library(limits: Limits = Limits()) -> Library:
    """limits + prelude + the reservations' helpers + every operation file + the bodies of BATCH, RESTORE and
    EXPIRY_READ, then one registered function per entry point (lua/_prelude.lua describes the calls).

    Redis runs a library's top level once, at FUNCTION LOAD, and each FCALL runs only its function: the
    helpers are not defined again at every call, as a script's are. Names carry a hash of the code, so
    that two versions of the service (a rolling deploy) each call their own functions in one Redis.
    """

    def read(name: str) -> str:
        return (LUA_DIR / name).read_text()

    pieces = [limits.lua(), read("_prelude.lua"), read("_reservations.lua")]
    pieces += [read(f"{name}.lua") for name in SCRIPT_NAMES]
    pieces += [f"local function {entry}_body()\n{read(file)}\nend" for entry, file in _BODIES.items()]
    entries = (*SCRIPT_NAMES, *_BODIES)
    for entry in entries:
        run = f"{entry}_body()" if entry in _BODIES else f"run_single('{entry}')"
        flags = ", flags = {'no-writes'}" if entry in _READ_ONLY else ""
        pieces.append(
            f"redis.register_function{{function_name = '{entry}' .. SUFFIX, callback = function(keys, args)\n"
            f"  begin_call(keys, args)\n  return {run}\nend{flags}}}"
        )
    body = "\n".join(pieces) + "\n"
    suffix = f"_{hashlib.sha1(body.encode()).hexdigest()[:16]}"
    name = f"billing{suffix}"
    code = f"#!lua name={name}\nlocal SUFFIX = '{suffix}'\n{body}"
    return Library(name, code, {entry: f"{entry}{suffix}" for entry in entries})


def reservation_as_of(record: dict[str, str], now_ms: int) -> dict[str, str]:
    """A stored reservation as of its partition's clock `now_ms`: one still reserved at or after its deadline is
    expired, updated at its deadline, exactly as lua/_reservations.lua expire_now() will write it (the sweeper
    releases it within BILLING_RESERVATION_SWEEP_INTERVAL_MS; any call on it releases it first)."""
    deadline = record.get("expires_at")
    if record.get("status") == "reserved" and deadline is not None and now_ms >= int(deadline):
        return {**record, "status": "expired", "updated_at": deadline}
    return record


class ReservationRecord(NamedTuple):
    """A reservation as `billing rebuild` restores it (recognized_amount: None unless recognized;
    refunded_amount: 0 until a refund)."""

    user_id: int
    service_id: int
    order_id: int
    amount: int
    status: str
    recognized_amount: int | None
    created_at: int
    updated_at: int
    expires_at: int | None = None  # None: made before reservations expired
    refunded_amount: int = 0


# A pipeline of either mode (Restore's calls are queued on one).
Pipeline = RedisPipeline | ClusterPipeline


class Restore:
    """The writes of `billing rebuild` (billing/projection/recovery.py), each a call of lua/restore.lua queued on
    a pipeline: the ledger's layout is written by the scripts alone, within the bounds they check."""

    def __init__(
        self,
        redis: RedisClient,
        keys: RedisKeys,
        limits: Limits = Limits(),
        closed_ttl_seconds: int = default("reservation_closed_ttl_seconds"),
        recognized_ttl_seconds: int = default("reservation_recognized_ttl_seconds"),
    ) -> None:
        self.redis = redis
        self.route = route(redis)
        self.keys = keys
        self.closed_ttl = closed_ttl_seconds
        self.recognized_ttl = recognized_ttl_seconds
        self.library = build_library(limits)

    async def load(self) -> None:
        """Load the library before queueing calls (in a Redis Cluster: on every master): a pipeline's FCALL is not
        sent again when its function is missing."""
        await self.route.load_library(self.library.code)

    def _call(self, pipe: Pipeline, keys: tuple[str, ...], *args: str | int) -> None:
        parts = self.library.call(RESTORE, keys, [str(arg) for arg in args])
        pipe.execute_command(*parts, **self.route.routing(parts))

    def account(self, pipe: Pipeline, user_id: int, available: int, reserved: int) -> None:
        self._call(pipe, (self.keys.account(user_id),), "account", available, reserved)

    def reservation(self, pipe: Pipeline, r: ReservationRecord, clock_ms: int) -> bool:
        """An open reservation (into its partition's expiry index too), or a closed one with what is left of its
        record's TTL at the ledger's time clock_ms; False (nothing written) for a closed one whose record would have
        expired by then."""
        ttl: int | str = ""
        if r.status != "reserved":
            lifetime = self.recognized_ttl if r.status == "recognized" else self.closed_ttl
            ttl = lifetime - (clock_ms - r.updated_at) // 1000
            if ttl < 1:
                return False
        recognized = "" if r.recognized_amount is None else r.recognized_amount
        expires_at = "" if r.expires_at is None else r.expires_at
        key = self.keys.reservation(r.user_id, r.service_id, r.order_id)
        refunded = r.refunded_amount or ""
        index = self.keys.expiry(self.keys.partition_of(r.user_id))
        args = (recognized, r.created_at, r.updated_at, expires_at, ttl, refunded)
        self._call(pipe, (key, index), "reservation", *r[:5], *args)
        return True

    def totals(self, pipe: Pipeline, partition: int, totals: dict[str, int]) -> None:
        """A partition's totals (every one of TOTAL_FIELDS)."""
        self._call(pipe, (self.keys.totals(partition),), "totals", *[totals[name] for name in TOTAL_FIELDS])

    def services(self, pipe: Pipeline, names: dict[int, str]) -> None:
        """The catalog, into every partition's copy."""
        flat = [part for item in sorted(names.items()) for part in item]
        for partition in self.keys.all():
            self._call(pipe, (self.keys.services(partition),), "services", *flat)

    def transit(self, pipe: Pipeline, partition: int, transfer_id: int, transit: dict[str, Any]) -> None:
        """A transfer in transit (billing/projection/recovery.py open_transfers), in its sender's partition."""
        self._call(pipe, (self.keys.transits(partition),), "transit", transfer_id, orjson.dumps(transit).decode())

    async def meta(self, partition: int, seq: int, clock: int) -> tuple[int, int]:
        """Raise a partition's sequence and clock to these (never lower them): (seq, clock) now."""
        parts = self.library.call(RESTORE, [self.keys.meta(partition)], ["meta", str(seq), str(clock)])
        stored_seq, stored_clock = await self.route.command(parts)
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
        reservation_ttl_seconds: int = default("reservation_ttl_seconds"),
        closed_ttl_seconds: int = default("reservation_closed_ttl_seconds"),
        recognized_ttl_seconds: int = default("reservation_recognized_ttl_seconds"),
    ) -> None:
        self.redis = redis
        # A reservation's lifetime when reserve names none, and how long closed ones' records stay (lua/reserve.lua)
        self.reservation_ttl = reservation_ttl_seconds
        self.closed_ttl = str(closed_ttl_seconds)
        self.recognized_ttl = str(recognized_ttl_seconds)
        # The scripts and the hot path's reads go by it: to the one Redis, or to the node of their keys.
        self.route = route(redis, wait_replicas, wait_timeout_ms)
        self.keys = RedisKeys(prefix, partitions, records_at_home=self.route.keys_of_any_slot)
        self.idempotency_ttl = str(idempotency_ttl_seconds)
        self.library = build_library(limits)
        # Fault injection for tests: awaited after a transfer's debit ("debited") and after its credit
        # ("credited"), with its id; raising stops the completion there, as if the process died.
        self.between_transfer_steps: Callable[[str, int], Awaitable[None]] | None = None

    async def load_scripts(self) -> None:
        """Load the function library wherever it may run (in a Redis Cluster: on every master; replicas get it
        from them)."""
        await self.route.load_library(self.library.code)

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

    def script_call(self, name: str, idem: Idempotency | None, fp: str, keys: list[str], args: list[Any]) -> list[str]:
        """The FCALL of one operation. Its args begin with its partition (the ..._call methods put it there),
        whose outbox, meta and totals the function runs on."""
        return self._script_call(name, self.keys.idempotency_record(idem, int(args[0]))[0], idem, fp, keys, args)

    def _script_call(
        self, name: str, record: str, idem: Idempotency | None, fp: str, keys: list[str], args: list[Any]
    ) -> list[str]:
        """script_call() with the idempotency record's key already known."""
        common_keys = [record, *self._partition_keys(int(args[0]))]
        common_args = [fp if idem is not None else "", self.idempotency_ttl]
        return self.library.call(name, common_keys + keys, common_args + [str(a) for a in args])

    def batch_command(self, calls: list[tuple[str, Idempotency | None, str, list[str], list[Any]]]) -> list[str]:
        """The FCALL of one batch run (lua/_batch.lua) of (name, idem, fingerprint, keys, args)
        operations, all of one partition, for send_batches."""
        partition = int(calls[0][4][0]) if calls else 0
        keys = self._partition_keys(partition)
        args = [self.idempotency_ttl]
        idempotency = self.keys.idempotency_record
        for name, idem, fp, op_keys, op_args in calls:
            keys.append(idempotency(idem, partition)[0])  # (any pointer was claimed before: claim_pointers)
            keys.extend(op_keys)
            args.append(name)
            args.append(fp if idem is not None else "")
            # op_args begin with the partition: the batch script checks it is the run's
            args.extend(map(str, op_args))
        return self.library.call(BATCH, keys, args)

    async def claim_pointers(
        self, calls: Sequence[tuple[str, Idempotency | None, str, list[str], list[Any]]]
    ) -> list[bool]:
        """Where one script cannot name keys of two partitions (Redis Cluster), the idempotency pointers of
        (name, idem, fingerprint, keys, args) calls are claimed first, in one pipeline: False for a call whose
        key another request used (it must not run), True otherwise. On one Redis there are none: the records are at
        their keys' homes."""
        claimed = [True] * len(calls)
        if self.keys.records_at_home:
            return claimed
        commands, where = [], []
        for index, (_name, idem, fp, _keys, args) in enumerate(calls):
            pointer = self.keys.idempotency_record(idem, int(args[0]))[1]
            if pointer is not None:
                commands.append(self._claim_pointer(pointer, fp, args[0]))
                where.append(index)
        for index, reply in zip(where, await self.route.pipeline(commands, write=True), strict=True):
            if isinstance(reply, Exception):
                raise reply
            claimed[index] = reply not in (b"reused", "reused")
        return claimed

    def _claim_pointer(self, pointer: str, fp: str, partition: Any) -> list[str]:
        return ["EVAL", _CLAIM_POINTER, "1", pointer, fp.split(" ", 1)[0], str(partition), self.idempotency_ttl]

    async def send_batches(self, commands: list[list[str]]) -> list[Any]:
        """Batch script runs (batch_command) in one pipeline: each run's reply, or its error reply as an
        exception; a lost connection raises (the runs' outcomes are unknown)."""
        return await self.route.pipeline(commands, write=True)

    async def run(self, name: str, idem: Idempotency | None, fp: str, keys: list[str], args: list[Any]) -> Outcome:
        """Run one operation; a transfer between partitions (its debit, or its replay while still in transit)
        is completed before it answers."""
        result = decode_reply(await self._send(name, idem, fp, keys, args))
        if isinstance(result, InTransit):
            return await self.complete_transfer(result, idem)
        return result

    async def _send(self, name: str, idem: Idempotency | None, fp: str, keys: list[str], args: list[Any]) -> Any:
        record, pointer = self.keys.idempotency_record(idem, int(args[0]))
        if pointer is not None:  # (Redis Cluster: the pointer at the key's home is claimed first)
            claimed = await self.route.write(self._claim_pointer(pointer, fp, args[0]))
            if claimed in (b"reused", "reused"):
                return [b"reused", b""]
        command = self._script_call(name, record, idem, fp, keys, args)
        try:
            return await self.route.write(command)
        except NoScriptError:  # the script did not run: safe to send again once loaded
            await self.load_scripts()
            return await self.route.write(command)

    async def complete_transfer(self, transit: InTransit, idem: Idempotency | None) -> Outcome:
        """Credit a transfer in transit in its recipient's partition, then settle it in its sender's: its final
        outcome (replayed as the transit was). Each step is one script run that a repeat leaves as it is, so
        any number of callers (the request, its retry, the recovery loop of any worker) may complete one
        transfer at once: it is credited and settled exactly once, and all of them get its final outcome."""
        record = self.keys.idempotency_record(idem, int(transit.transfer["from_partition"]))[0]
        return replace(await self.complete_transit(transit.transfer, record), replayed=transit.replayed)

    async def complete_transit(self, transfer: dict[str, Any], record: str) -> Outcome:
        """complete_transfer() of a transit as lua/transfer_debit.lua recorded it (record: the idempotency
        record it names, '' for none)."""
        t = transfer
        sender, recipient, transfer_id = int(t["from_partition"]), int(t["to_partition"]), int(t["id"])
        if self.between_transfer_steps is not None:
            await self.between_transfer_steps("debited", transfer_id)
        credit_keys = [self.keys.account(int(t["to_user_id"])), self.keys.credited(recipient, transfer_id)]
        credit_args = [recipient, transfer_id, t["from_user_id"], t["to_user_id"], t["amount"], t["comment"]]
        _kind, credited = await self._send(CREDIT, None, "", credit_keys, credit_args)
        if self.between_transfer_steps is not None:
            await self.between_transfer_steps("credited", transfer_id)
        settle_keys = [
            self.keys.transits(sender),
            self.keys.settled(sender, transfer_id),
            self.keys.account(int(t["from_user_id"])),
            record or self.keys.idempotency_record(None, sender)[0],
        ]
        _kind, final = await self._send(SETTLE, None, "", settle_keys, [sender, transfer_id, credited.decode()])
        # Settled: the credit marker may now expire (kept forever if this is lost; never too early).
        await self.route.command(["EXPIRE", self.keys.credited(recipient, transfer_id), self.idempotency_ttl])
        return outcome_from_record(final, replayed=False)

    async def open_transits(self, min_age_ms: int = 0) -> list[tuple[dict[str, Any], str]]:
        """The transits of every partition debited at least min_age_ms ago by Redis's clock: (transfer, the
        idempotency record it names or '')."""
        now_s, now_us = await awaited(self.redis.time())
        now_ms = now_s * 1000 + now_us // 1000
        commands = [["HVALS", self.keys.transits(p)] for p in self.keys.all()]
        out = []
        for reply in await self.route.pipeline(commands):
            if isinstance(reply, Exception):
                raise reply
            for raw in reply:
                transit = orjson.loads(raw)
                if now_ms - int(transit["transfer"]["created_at"]) >= min_age_ms:
                    out.append((transit["transfer"], str(transit["record"])))
        return out

    # ---- the operations -------------------------------------------------------------------

    # Each returns (script name, keys, args); args begin with the partition the operation runs in (its
    # user's, the sender's for a transfer).

    @staticmethod
    def partitions_of_call(name: str, args: Sequence[Any]) -> frozenset[int]:
        """The partitions a script call of the *_call methods below touches: its first argument's, and a
        transfer's recipient's (its last argument; the debit of a transfer between partitions touches only the
        sender's, but its completion, before the batch goes on, the recipient's)."""
        if name in ("transfer", DEBIT):
            return frozenset((int(args[0]), int(args[-1])))
        return frozenset((int(args[0]),))

    @staticmethod
    def shared_keys_of_call(name: str, idem: Idempotency | None, args: Sequence[Any]) -> frozenset[Hashable]:
        """What a call may write that a call of another partition sees: its Idempotency-Key (its record or pointer
        at the key's home, named by its Idempotency, so the key's digest is not computed twice) and a service's
        name (a reserve naming it: Ledger.services() shows the latest name of every partition)."""
        shared: set[Hashable] = {idem} if idem is not None else set()
        if name == "reserve" and args[5]:
            shared.add(("service", int(args[2])))
        return frozenset(shared)

    def deposit_call(self, user_id: int, amount: int, comment: str | None) -> tuple[str, list[str], list[Any]]:
        p = self.keys.partition_of(user_id)
        return "deposit", [self.keys.account_in(p, user_id)], [p, user_id, amount, comment or ""]

    def withdraw_call(self, user_id: int, amount: int, comment: str | None) -> tuple[str, list[str], list[Any]]:
        p = self.keys.partition_of(user_id)
        return "withdraw", [self.keys.account_in(p, user_id)], [p, user_id, amount, comment or ""]

    def transfer_call(
        self, from_user_id: int, to_user_id: int, amount: int, comment: str | None
    ) -> tuple[str, list[str], list[Any]]:
        """One script within a partition; between two, the debit (Ledger.run completes the rest)."""
        p, q = self.keys.partition_of(from_user_id), self.keys.partition_of(to_user_id)
        if p != q:
            keys = [self.keys.account_in(p, from_user_id), self.keys.transits(p)]
            return DEBIT, keys, [p, from_user_id, to_user_id, amount, comment or "", q]
        keys = [self.keys.account_in(p, from_user_id), self.keys.account_in(q, to_user_id), *self._partition_keys(q)]
        return "transfer", keys, [p, from_user_id, to_user_id, amount, comment or "", q]

    def _reservation_keys(self, user_id: int, service_id: int, order_id: int) -> list[str]:
        partition = self.keys.partition_of(user_id)
        return [
            self.keys.account_in(partition, user_id),
            self.keys.reservation(user_id, service_id, order_id),
            self.keys.services(partition),
            self.keys.expiry(partition),
        ]

    def reserve_call(
        self,
        user_id: int,
        service_id: int,
        order_id: int,
        amount: int,
        service_name: str | None,
        comment: str | None,
        expires_in: int | None = None,
    ) -> tuple[str, list[str], list[Any]]:
        """expires_in: seconds until it expires (None: BILLING_RESERVATION_TTL_SECONDS)."""
        keys = self._reservation_keys(user_id, service_id, order_id)
        p = self.keys.partition_of(user_id)
        lifetime = self.reservation_ttl if expires_in is None else expires_in
        args = [p, user_id, service_id, order_id, amount, service_name or "", comment or "", lifetime, self.closed_ttl]
        return "reserve", keys, args

    def recognize_call(
        self, user_id: int, service_id: int, order_id: int, amount: int
    ) -> tuple[str, list[str], list[Any]]:
        keys = self._reservation_keys(user_id, service_id, order_id)
        p = self.keys.partition_of(user_id)
        return "recognize", keys, [p, user_id, service_id, order_id, amount, self.recognized_ttl, self.closed_ttl]

    def cancel_call(
        self, user_id: int, service_id: int, order_id: int, comment: str | None
    ) -> tuple[str, list[str], list[Any]]:
        keys = self._reservation_keys(user_id, service_id, order_id)
        p = self.keys.partition_of(user_id)
        return "cancel", keys, [p, user_id, service_id, order_id, comment or "", self.closed_ttl]

    def expire_call(self, user_id: int, service_id: int, order_id: int) -> tuple[str, list[str], list[Any]]:
        """Release the reservation if it is past its deadline and still reserved (lua/expire.lua)."""
        keys = self._reservation_keys(user_id, service_id, order_id)
        return "expire", keys, [self.keys.partition_of(user_id), user_id, service_id, order_id, self.closed_ttl]

    def refund_call(
        self, user_id: int, service_id: int, order_id: int, amount: int, comment: str | None
    ) -> tuple[str, list[str], list[Any]]:
        keys = self._reservation_keys(user_id, service_id, order_id)[:3]  # a recognized one is in no expiry index
        p = self.keys.partition_of(user_id)
        return "refund", keys, [p, user_id, service_id, order_id, amount, comment or ""]

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
        """Name a service in every partition's catalog: one script run per partition (each atomic in its
        partition, all sent in one pipeline). Each partition whose name changes puts the change in its outbox
        (MongoDB keeps the latest). Applied when some partition changed, else unchanged; running it again
        completes one that stopped half way."""
        commands = [
            self.script_call("set_service", None, "", [self.keys.services(p)], [p, service_id, name])
            for p in self.keys.all()
        ]
        replies = await self.route.pipeline(commands, write=True)
        if any(isinstance(reply, NoScriptError) for reply in replies):
            await self.load_scripts()  # a run whose function was missing did not run; the others are safe to run again
            replies = await self.route.pipeline(commands, write=True)
        outcomes: list[Outcome] = []
        for reply in replies:
            if isinstance(reply, Exception):
                raise reply
            outcomes.append(outcome_from_record(reply[1], replayed=False))
        return next((o for o in outcomes if isinstance(o, Applied)), outcomes[0])

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

    async def _expiry_read(self, keys: list[str], args: list[str]) -> list[bytes]:
        """A call of lua/expiry_read.lua (loaded again and sent once more when missing: it only reads)."""
        command = self.library.call(EXPIRY_READ, keys, args)
        try:
            reply = await self.route.command(command)
        except NoScriptError:
            await self.load_scripts()
            reply = await self.route.command(command)
        return [item if isinstance(item, bytes) else str(item).encode() for item in reply]

    async def reservation(self, user_id: int, service_id: int, order_id: int) -> dict[str, str] | None:
        """A reservation as of its partition's clock now (reservation_as_of): one past its deadline is never
        shown reserved, whether or not it has been released yet."""
        partition = self.keys.partition_of(user_id)
        key = self.keys.reservation(user_id, service_id, order_id)
        now, *flat = await self._expiry_read([key, self.keys.meta(partition)], ["reservation"])
        if not flat:
            return None
        record = {flat[i].decode(): flat[i + 1].decode() for i in range(0, len(flat), 2)}
        return reservation_as_of(record, int(now))

    async def partition_now(self, partition: int) -> int:
        """The partition's clock now, in ms, as its next script would read it (lua/expiry_read.lua)."""
        (now,) = await self._expiry_read([self.keys.meta(partition)], ["now"])
        return int(now)

    async def due_reservations(self, limit: int) -> dict[int, list[tuple[int, int, int]]]:
        """The reservations past their deadline by their partition's clock (at most `limit` per partition, earliest
        first) and not yet released, per partition: one read per partition, in one pipeline."""
        commands = [
            self.library.call(EXPIRY_READ, [self.keys.expiry(p), self.keys.meta(p)], ["due", str(limit)])
            for p in self.keys.all()
        ]
        replies = await self.route.pipeline(commands)
        if any(isinstance(reply, NoScriptError) for reply in replies):
            await self.load_scripts()
            replies = await self.route.pipeline(commands)
        due: dict[int, list[tuple[int, int, int]]] = {}
        for partition, reply in zip(self.keys.all(), replies, strict=True):
            if isinstance(reply, Exception):
                raise reply
            if len(reply) > 1:
                due[partition] = [self.keys.expiry_ref(member) for member in reply[1:]]
        return due

    async def user_reservations(
        self, user_id: int, status: str | None = None, limit: int = 200
    ) -> list[dict[str, str]]:
        """A user's reservations (optionally of one status, as reservation() shows it), oldest first, at most `limit`.

        SCAN walks the whole keyspace in steps (cost grows with the number of keys, not with this user's
        reservations); it never blocks Redis, and support looks users up one at a time.
        """
        now = await self.partition_now(self.keys.partition_of(user_id))
        found: list[dict[str, str]] = []
        async for key in self.redis.scan_iter(match=self.keys.user_reservation_pattern(user_id), count=1000):
            raw = await awaited(self.redis.hgetall(key))
            if not raw:
                continue  # removed between SCAN and HGETALL
            record = reservation_as_of({k.decode(): v.decode() for k, v in raw.items()}, now)
            if status is None or record.get("status") == status:
                found.append(record)
        found.sort(key=lambda r: (int(r.get("created_at", 0)), int(r["service_id"]), int(r["order_id"])))
        return found[:limit]

    async def services(self) -> dict[int, str]:
        """The catalog: each service's latest name over the partitions' catalogs (by the time each partition
        named it, then by partition)."""
        commands = [["HGETALL", self.keys.services(p)] for p in self.keys.all()]
        latest: dict[int, tuple[int, int, str]] = {}
        for partition, reply in enumerate(await self.route.pipeline(commands)):
            if isinstance(reply, Exception):
                raise reply
            fields = _hash_reply(reply)
            for field, name in fields.items():
                if field.startswith("at:"):
                    continue
                version = (int(fields.get(f"at:{field}", "0")), partition, name)
                if version > latest.get(int(field), (-1, -1, "")):
                    latest[int(field)] = version
        return {service_id: name for service_id, (_, _, name) in latest.items()}

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


def decode_reply(reply: list[bytes]) -> Outcome | InTransit:
    """A single script's reply: its outcome (or its transfer in transit); IdempotencyKeyReused when the key was
    used for another request."""
    kind, payload = reply
    if kind == b"reused":
        raise IdempotencyKeyReused()
    return script_result(payload, replayed=kind == b"replay")


class BatchOperationFailed(Exception):
    """One operation of a batch script run failed inside Redis: it changed nothing, and stopped the run
    (the operations before it are complete, the ones after it did not run)."""


def decode_batch_reply(reply: list[bytes]) -> list[BatchResult | InTransit | BatchOperationFailed]:
    """What each operation of a batch script run came to, in order: the failure that stopped the run (it
    changed nothing) for the operation that failed, NotRun(retryable) for the ones after it."""
    out: list[BatchResult | InTransit | BatchOperationFailed] = []
    for index in range(0, len(reply), 2):
        kind, payload = reply[index], reply[index + 1]
        if kind == b"error":
            out.append(BatchOperationFailed(payload.decode(errors="replace")))
        elif kind == b"skipped":
            out.append(NotRun(retryable=True))
        elif kind == b"reused":
            out.append(KeyReused())
        else:
            out.append(script_result(payload, replayed=kind == b"replay"))
    return out


def glob_escape(text: str) -> str:
    """Escape Redis glob metacharacters so a literal prefix matches only itself."""
    return "".join("\\" + ch if ch in "*?[]\\" else ch for ch in text)
