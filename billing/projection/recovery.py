"""Recovery: reconcile Redis balances and reservations with the MongoDB ledger, and rebuild Redis from it.

Both run on one Redis and on a Redis Cluster. On one Redis every read is a MULTI over all partitions (one instant
of the whole ledger). On a cluster a MULTI holds the keys of one slot, so of one partition: each chunk of keys is
read with its partition's sequence, each partition's totals with its transits, and the cross-partition check is
made transfer by transfer against the ledger (transit_mismatches) rather than on one instant of every partition.
SCAN runs on every master that serves a partition, found by the partition's slot (scan_keys).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import defaultdict
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import orjson
from redis.asyncio.cluster import RedisCluster

from billing.core.config import DRAIN_TIMEOUT_SECONDS, MAX_PARTITIONS, default
from billing.core.parsing import INT64_MAX
from billing.core.timefmt import datetime_to_ms
from billing.core.transactions import (
    RESERVATION_TYPES,
    TOTALS,
    TRANSFERS_IN,
    TRANSFERS_OUT,
    TRANSFERS_REVERSED,
    TransactionType,
)
from billing.infra.redis_route import RedisClient
from billing.ledger.scripts import RedisKeys, ReservationRecord, Restore
from billing.projection.store import LedgerStore
from billing.projection.watermark import compute_all

# How each transaction type moves an account: (change of available, change of reserved) per kopeck.
EFFECTS: dict[str, tuple[int, int]] = {t.value: (t.available, t.reserved) for t in TransactionType}
EVERY_ID = INT64_MAX  # a cut-off above every transaction id
TRANSFER_KINDS = (TransactionType.TRANSFER_OUT, TransactionType.TRANSFER_IN, TransactionType.TRANSFER_REVERSAL)
CHUNK = 500

ResvKey = tuple[int, int, int]
# (step, done, total): how far the long loops are, for a caller that shows it; total None while unknown.
# Called once per chunk of CHUNK items, so it costs nothing next to the work.
Progress = Callable[[str, int, int | None], None]


def no_progress(step: str, done: int, total: int | None) -> None:
    """The default Progress: nobody is watching."""


@dataclass(frozen=True)
class Mismatch:
    """One disagreement between Redis and the ledger."""

    kind: str
    subject: str
    redis: Any
    ledger: Any

    def __str__(self) -> str:
        return f"{self.kind} {self.subject}: redis={self.redis} ledger={self.ledger}"


@dataclass
class ReconcileReport:
    accounts: int = 0
    reservations: int = 0
    transactions: int = 0
    mismatches: list[Mismatch] = field(default_factory=list)
    in_transit: int = 0  # kopecks debited by transfers between partitions, not yet credited nor reversed

    @property
    def ok(self) -> bool:
        return not self.mismatches

    def summary(self) -> str:
        verdict = "OK" if self.ok else f"{len(self.mismatches)} MISMATCH(ES)"
        transit = f", {self.in_transit} kopecks in transit" if self.in_transit else ""
        return (
            f"reconcile: {self.accounts} accounts, {self.reservations} reservations, "
            f"{self.transactions} ledger transactions{transit}: {verdict}"
        )


@dataclass
class RebuildReport:
    accounts: int = 0
    reservations: int = 0
    open_reservations: int = 0
    services: int = 0
    transits: int = 0  # transfers between partitions debited and not yet credited nor reversed
    seq: int = 0  # the largest sequence number of a partition restored
    clock: int = 0

    def summary(self) -> str:
        return (
            f"rebuild: {self.accounts} accounts, {self.reservations} reservations "
            f"({self.open_reservations} open), {self.services} services, "
            + (f"{self.transits} transfers in transit, " if self.transits else "")
            + f"seq {self.seq}, clock {self.clock}"
        )


class RedisNotEmpty(Exception):
    """rebuild refuses to write over accounts that are already in Redis."""


# ---- the ledger side -------------------------------------------------------------------------


@dataclass
class LedgerView:
    """Sums of the ledger, with the transactions after a cut-off kept apart so any cut-off can be applied."""

    by_user: dict[int, dict[str, tuple[int, int]]]  # user -> type -> (sum, count)
    last_by_user: dict[int, int]  # user -> their largest transaction id
    by_resv: dict[ResvKey, dict[str, dict[str, int]]]  # (u, s, o) -> type -> {total, n, first, last}
    recent: list[dict[str, Any]]  # documents with an id above the earliest cut-off, in id order
    transactions: int
    recent_by_user: dict[int, list[dict[str, Any]]] = field(default_factory=dict)
    recent_by_resv: dict[ResvKey, list[dict[str, Any]]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for doc in self.recent:
            self.recent_by_user.setdefault(int(doc["user_id"]), []).append(doc)
            if "order_id" in doc and "service_id" in doc:
                self.recent_by_resv.setdefault(_resv_key(doc), []).append(doc)

    def account(self, user_id: int, upto: int) -> tuple[int, int, int]:
        """(available, reserved, count) of a user counting transactions with id <= upto."""
        available = reserved = count = 0
        for kind, (total, n) in self.by_user.get(user_id, {}).items():
            da, dr = EFFECTS.get(kind, (0, 0))
            available, reserved, count = available + da * total, reserved + dr * total, count + n
        for doc in self.recent_by_user.get(user_id, []):
            if int(doc["_id"]) > upto:
                da, dr = EFFECTS.get(doc["type"], (0, 0))
                amount = int(doc["amount"])
                available, reserved, count = available - da * amount, reserved - dr * amount, count - 1
        return available, reserved, count

    def reservation(self, key: ResvKey, upto: int) -> dict[str, int]:
        """reserve / charge / release / refund sums (and the number of reserves) of one order, ids <= upto."""
        rows = self.by_resv.get(key, {})
        sums = {kind: rows.get(kind, {}).get("total", 0) for kind in RESERVATION_TYPES}
        sums["reserves"] = rows.get(TransactionType.RESERVE, {}).get("n", 0)
        for doc in self.recent_by_resv.get(key, []):
            if int(doc["_id"]) > upto and doc["type"] in sums:
                sums[doc["type"]] -= int(doc["amount"])
                sums["reserves"] -= doc["type"] == TransactionType.RESERVE
        return sums

    def total(self, kind: str, upto: int) -> int:
        value = sum(per_type.get(kind, (0, 0))[0] for per_type in self.by_user.values())
        return value - sum(int(d["amount"]) for d in self.recent if d["type"] == kind and int(d["_id"]) > upto)

    def partition_total(self, kind: str, users: Iterable[int], upto: int) -> int:
        """The sum of one type over the transactions of these users (one partition's) with ids <= upto."""
        value = 0
        for user_id in users:
            value += self.by_user.get(user_id, {}).get(kind, (0, 0))[0]
            value -= sum(
                int(d["amount"])
                for d in self.recent_by_user.get(user_id, [])
                if d["type"] == kind and int(d["_id"]) > upto
            )
        return value


def _resv_key(doc: dict[str, Any]) -> ResvKey:
    return int(doc["user_id"]), int(doc["service_id"]), int(doc["order_id"])


async def load_ledger(store: LedgerStore, after: int, progress: Progress = no_progress) -> LedgerView:
    step = "read the MongoDB ledger (queries)"
    progress(step, 0, 3)
    by_user: dict[int, dict[str, tuple[int, int]]] = defaultdict(dict)
    last_by_user: dict[int, int] = {}
    transactions = 0
    for user_id, kind, total, n, last in await store.sums_by_user():
        by_user[user_id][kind] = (total, n)
        last_by_user[user_id] = max(last_by_user.get(user_id, 0), last)
        transactions += n
    progress(step, 1, 3)
    by_resv: dict[ResvKey, dict[str, dict[str, int]]] = defaultdict(dict)
    for row in await store.sums_by_reservation():
        key = (int(row["user_id"]), int(row["service_id"]), int(row["order_id"]))
        sums = {k: int(row[k]) for k in ("total", "n", "first", "last", "expires_at", "expired")}
        by_resv[key][str(row["type"])] = sums  # expires_at 0: none
    progress(step, 2, 3)
    recent = await store.transactions_after(after)
    progress(step, 3, 3)
    return LedgerView(dict(by_user), last_by_user, dict(by_resv), recent, transactions)


# ---- the Redis side --------------------------------------------------------------------------


def _s(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


async def scan_keys(redis: RedisClient, keys: RedisKeys, pattern: str) -> AsyncIterator[Any]:
    """Every key matching. On a cluster: SCAN on each master serving a partition's slot, each cursor walked to its
    end. The masters come from the slot map the commands are routed by, not from redis-py's list of primaries:
    after a failover that list may still call the promoted replica a replica, and a SCAN of "every primary"
    would miss its keys."""
    if not isinstance(redis, RedisCluster):
        async for key in redis.scan_iter(match=pattern, count=1000):
            yield key
        return
    await redis.initialize()  # a no-op once the slot map is known
    masters = {}
    for p in keys.all():
        node = redis.get_node_from_key(keys.tag(p))
        assert node is not None  # the master: None only for replica=True
        masters[node.name] = node
    for node in masters.values():
        async for key in redis.scan_iter(match=pattern, count=1000, target_nodes=node):
            yield key


async def _scan(redis: RedisClient, keys: RedisKeys, pattern: str) -> list[str]:
    return [_s(key) async for key in scan_keys(redis, keys, pattern)]


def _last_id(partition: int, seq: Any) -> int:
    """The last id a partition issued (0 for none) from its seq."""
    return int(seq) * MAX_PARTITIONS + partition if seq else 0


def _last_ids(seqs: list[Any]) -> list[int]:
    """The last id each partition issued (0 for none) from the partitions' seqs, in partition order."""
    return [_last_id(p, seq) for p, seq in enumerate(seqs)]


async def _seqs(redis: RedisClient, keys: RedisKeys) -> list[int]:
    """Every partition's last id: at one instant on one Redis, each at its own on a cluster."""
    pipe = redis.pipeline(transaction=not isinstance(redis, RedisCluster))
    for p in keys.all():
        pipe.hget(keys.meta(p), "seq")
    return _last_ids(await pipe.execute())


def _after(last_ids: list[int]) -> int:
    """A cut-off below every partition's (partitions that issued nothing hold no transactions to keep apart)."""
    return min((last for last in last_ids if last), default=0)


async def _snapshot(
    redis: RedisClient,
    keys: RedisKeys,
    names: list[str],
    read: str,
    progress: Progress = no_progress,
    step: str = "",
) -> list[tuple[str, Any, int]]:
    """Read hashes in MULTI chunks, each with the last id of its partitions at that instant: (key, value, the last
    id of the key's partition). On a cluster each chunk holds keys of one partition (a MULTI of one slot)."""
    out: list[tuple[str, Any, int]] = []
    progress(step, 0, len(names))
    chunks: list[tuple[list[int], list[str]]] = []
    if isinstance(redis, RedisCluster):
        by_partition: dict[int, list[str]] = defaultdict(list)
        for name in names:
            by_partition[keys.partition_of_key(name)].append(name)
        for p, members in sorted(by_partition.items()):
            chunks += [([p], members[start : start + CHUNK]) for start in range(0, len(members), CHUNK)]
    else:
        chunks = [(list(keys.all()), names[start : start + CHUNK]) for start in range(0, len(names), CHUNK)]
    for partitions, chunk in chunks:
        pipe = redis.pipeline(transaction=True)
        # Raw commands: redis-py's (7.4) cluster MULTI hands the `keys` keyword of its hmget, hgetall and hget to
        # reply callbacks that take none.
        for name in chunk:
            if read == "balance":
                pipe.execute_command("HMGET", name, "available", "reserved")
            else:
                pipe.execute_command("HGETALL", name)
        for p in partitions:
            pipe.execute_command("HGET", keys.meta(p), "seq")
        replies = await pipe.execute()
        values = replies[: len(chunk)]
        last = {p: _last_id(p, seq) for p, seq in zip(partitions, replies[len(chunk) :], strict=True)}
        out += [(name, value, last[keys.partition_of_key(name)]) for name, value in zip(chunk, values, strict=True)]
        progress(step, len(out), len(names))
    return out


@dataclass
class PartitionBooks:
    """One partition read at one instant (a MULTI of its slot): its totals, its transits and its last id."""

    totals: dict[str, int]
    transits: dict[int, dict[str, Any]]  # transfer id -> the transfer as lua/transfer_debit.lua recorded it
    last_id: int


async def partition_books(redis: RedisClient, keys: RedisKeys) -> list[PartitionBooks]:
    """Every partition's books, each partition at its own instant, in partition order."""
    books = []
    for p in keys.all():
        pipe = redis.pipeline(transaction=True)
        pipe.execute_command("HGETALL", keys.totals(p))
        pipe.execute_command("HGETALL", keys.transits(p))
        pipe.execute_command("HGET", keys.meta(p), "seq")
        totals, transits, seq = await pipe.execute()
        books.append(
            PartitionBooks(
                {_s(k): int(v) for k, v in totals.items()},
                {int(_s(tid)): orjson.loads(raw)["transfer"] for tid, raw in transits.items()},
                _last_id(p, seq),
            )
        )
    return books


def transit_mismatches(keys: RedisKeys, books: list[PartitionBooks], legs: list[dict[str, Any]]) -> list[Mismatch]:
    """Redis's transfers in transit against the ledger, partition by partition at the instant each was read.

    A transfer's debit and reversal are transactions of its sender's partition, so at that partition's last id
    read the ledger says exactly whether it was debited and whether it was reversed; its credit is in another
    partition, and its settlement (which removes the transit) is no transaction at all. So: every transit in
    Redis must be a debit of the ledger up to that id, of the same amount, not reversed up to it; and every such
    debit that the ledger holds no credit nor reversal of at all (drained after the read) must still be in
    transit in Redis."""
    debits = {int(d["transfer_id"]): d for d in legs if d["type"] == TransactionType.TRANSFER_OUT}
    closes: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for doc in legs:
        if doc["type"] != TransactionType.TRANSFER_OUT:
            closes[int(doc["transfer_id"])].append(doc)
    out = []
    for p, book in enumerate(books):
        for transfer_id, transfer in sorted(book.transits.items()):
            debit = debits.get(transfer_id)
            amount = int(transfer["amount"])
            if debit is None or int(debit["_id"]) > book.last_id or int(debit["amount"]) != amount:
                ledger = None if debit is None else int(debit["amount"])
                out.append(Mismatch("transit", f"partition {p} transfer {transfer_id} debit", amount, ledger))
            elif any(
                doc["type"] == TransactionType.TRANSFER_REVERSAL and int(doc["_id"]) <= book.last_id
                for doc in closes[transfer_id]
            ):
                out.append(Mismatch("transit", f"partition {p} transfer {transfer_id} reversed", amount, 0))
        for transfer_id, debit in sorted(debits.items()):
            if (
                keys.partition_of(int(debit["user_id"])) == p
                and int(debit["_id"]) <= book.last_id
                and not closes[transfer_id]
                and transfer_id not in book.transits
            ):
                amount = int(debit["amount"])
                out.append(Mismatch("transit", f"partition {p} transfer {transfer_id} missing", None, amount))
    return out


def ledger_in_transit(legs: list[dict[str, Any]]) -> int:
    """The kopecks the ledger holds debits of with neither a credit nor a reversal."""
    closed = {int(d["transfer_id"]) for d in legs if d["type"] != TransactionType.TRANSFER_OUT}
    return sum(
        int(d["amount"])
        for d in legs
        if d["type"] == TransactionType.TRANSFER_OUT and int(d["transfer_id"]) not in closed
    )


async def project_everything(redis: RedisClient, keys: RedisKeys, projector: Any, timeout: float) -> None:
    """Until MongoDB holds every transaction written so far. On a cluster the projectors share the partitions
    (leases), so the projectors of running workers may hold some: see project_upto."""
    if isinstance(redis, RedisCluster):
        await project_upto(projector, await _seqs(redis, keys), timeout)
    else:
        await projector.drain(timeout=timeout)


async def project_upto(projector: Any, last_ids: list[int], timeout: float) -> None:
    """Until MongoDB holds every transaction up to each partition's last id: the projector drains the partitions
    it holds a lease on, the projectors of running workers the others (each partition's watermark says how far
    it is; a dead worker's partitions are taken over once its leases run out)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    watermarks = list(projector.watermarks.values())
    while True:
        with contextlib.suppress(TimeoutError):
            await projector.drain(timeout=max(0.1, min(1.0, deadline - loop.time())))
        marks = dict(zip((w.partition for w in watermarks), await compute_all(watermarks), strict=True))
        behind = [p for p, last in enumerate(last_ids) if last and (marks.get(p) or 0) < last]
        if not behind:
            return
        if loop.time() >= deadline:
            raise TimeoutError(f"outbox not projected in {timeout} s: partitions {behind} behind")
        await asyncio.sleep(0.1)


async def money_in_transit(redis: RedisClient, keys: RedisKeys, attempts: int = 50) -> tuple[list[dict[str, int]], int]:
    """Every partition's totals and the kopecks in transit (debited by a transfer between partitions, neither
    credited nor reversed yet), at one instant: one MULTI reads the totals, the transits and the credit markers
    of the transits known from the read before; it is read again while it finds a transit it had not asked
    about."""
    known: dict[str, int] = {}  # transfer id -> recipient partition
    for _attempt in range(attempts):
        pipe = redis.pipeline(transaction=True)
        for p in keys.all():
            pipe.hgetall(keys.totals(p))
            pipe.hgetall(keys.transits(p))
        asked = list(known.items())
        for transfer_id, recipient in asked:
            pipe.get(keys.credited(recipient, int(transfer_id)))
        replies = await pipe.execute()
        totals = [{_s(k): int(v) for k, v in replies[2 * p].items()} for p in keys.all()]
        transits = {
            _s(tid): orjson.loads(raw)["transfer"] for p in keys.all() for tid, raw in replies[2 * p + 1].items()
        }
        markers = dict(zip((tid for tid, _ in asked), replies[2 * keys.partitions :], strict=True))
        if set(transits) <= set(markers):
            uncredited = 0
            for tid, transfer in transits.items():
                marker = markers[tid]
                if marker is None or orjson.loads(marker).get("result") != "applied":
                    uncredited += int(transfer["amount"])
            return totals, uncredited
        known.update({tid: int(t["to_partition"]) for tid, t in transits.items()})
    raise TimeoutError(f"transfers kept starting: no stable read of the money in transit in {attempts} reads")


def transfer_mismatches(legs: list[dict[str, Any]]) -> list[Mismatch]:
    """Each transfer between partitions in the ledger: at most one debit and at most one credit or reversal,
    of the same amount (a leg may still be on its way to MongoDB, never doubled)."""
    by_transfer: dict[int, dict[str, list[int]]] = defaultdict(lambda: {"debit": [], "close": []})
    for doc in legs:
        side = "debit" if doc["type"] == TransactionType.TRANSFER_OUT else "close"
        by_transfer[int(doc["transfer_id"])][side].append(int(doc["amount"]))
    out = []
    for transfer_id, sides in sorted(by_transfer.items()):
        debits, closes = sides["debit"], sides["close"]
        if len(debits) > 1 or len(closes) > 1 or (debits and closes and debits != closes):
            out.append(Mismatch("transfer", f"{transfer_id} (debit, credit or reversal)", debits, closes))
    return out


# ---- reconcile -------------------------------------------------------------------------------


async def reconcile(
    redis: RedisClient,
    keys: RedisKeys,
    store: LedgerStore,
    projector: Any = None,
    drain_timeout: float = DRAIN_TIMEOUT_SECONDS,
    progress: Progress = no_progress,
) -> ReconcileReport:
    """Prove Redis equals the ledger: balances, open reservations and each partition's totals, each at its own
    instant, and that the transfers out of all partitions equal the transfers into them.

    Every Redis read comes with the partitions' sequences at its instant; the ledger is compared up to the
    last id of the partition read, so the check is exact even while money keeps moving. On a Redis Cluster the
    transfers between partitions are checked one by one (transit_mismatches) instead of on one instant of all.
    """
    cluster = isinstance(redis, RedisCluster)
    seq0 = await _seqs(redis, keys)
    progress("find accounts in Redis", 0, None)
    account_keys = await _scan(redis, keys, keys.account_pattern())
    accounts = await _snapshot(redis, keys, account_keys, "balance", progress, "read accounts from Redis")
    progress("find reservations in Redis", 0, None)
    reservation_keys = await _scan(redis, keys, keys.reservation_pattern())
    reservations = await _snapshot(redis, keys, reservation_keys, "hash", progress, "read reservations from Redis")
    books: list[PartitionBooks] = []
    if cluster:
        books = await partition_books(redis, keys)
        totals_rows = [(keys.totals(p), book.totals, book.last_id) for p, book in enumerate(books)]
        all_totals, in_transit = [book.totals for book in books], 0
    else:
        totals_rows = await _snapshot(redis, keys, [keys.totals(p) for p in keys.all()], "hash")
        all_totals, in_transit = await money_in_transit(redis, keys)
    if projector is not None:
        progress("project the outbox into MongoDB", 0, None)
        await project_everything(redis, keys, projector, drain_timeout)
    ledger = await load_ledger(store, _after(seq0), progress)
    legs = await store.transfer_legs()
    if cluster:
        in_transit = ledger_in_transit(legs)
    report = ReconcileReport(len(accounts), len(reservations), ledger.transactions, in_transit=in_transit)
    bad = report.mismatches.append

    seen_users = set()
    for done, (key, (available, reserved), last_id) in enumerate(accounts):
        if done % CHUNK == 0:
            progress("compare accounts", done, len(accounts))
        user_id = keys.account_user_id(key)
        seen_users.add(user_id)
        redis_balance = (int(available or 0), int(reserved or 0))
        exp_available, exp_reserved, _n = ledger.account(user_id, last_id)
        if redis_balance != (exp_available, exp_reserved):
            bad(
                Mismatch(
                    "account", f"user {user_id} (available, reserved)", redis_balance, (exp_available, exp_reserved)
                )
            )
    for user_id in sorted(set(ledger.by_user) - seen_users):
        exp_available, exp_reserved, count = ledger.account(user_id, seq0[keys.partition_of(user_id)])
        if count > 0:  # it existed before the scan began, so the scan would have seen it
            bad(Mismatch("account", f"user {user_id} missing in Redis", None, (exp_available, exp_reserved)))

    progress("compare accounts", len(accounts), len(accounts))

    seen_resv = set()
    for done, (_key, raw, last_id) in enumerate(reservations):
        if done % CHUNK == 0:
            progress("compare reservations", done, len(reservations))
        h = {_s(k): _s(v) for k, v in raw.items()}
        if not h:
            continue
        rkey = (int(h["user_id"]), int(h["service_id"]), int(h["order_id"]))
        seen_resv.add(rkey)
        sums = ledger.reservation(rkey, last_id)
        subject = "reservation user {} service {} order {}".format(*rkey)
        amount = int(h["amount"])
        open_redis = amount if h["status"] == "reserved" else 0
        open_ledger = sums[TransactionType.RESERVE] - sums[TransactionType.CHARGE] - sums[TransactionType.RELEASE]
        if sums["reserves"] != 1 or sums[TransactionType.RESERVE] != amount:
            bad(Mismatch("reservation", subject + " amount", amount, sums[TransactionType.RESERVE]))
        if open_redis != open_ledger:
            bad(Mismatch("reservation", subject + " open amount", open_redis, open_ledger))
        if h["status"] == "recognized" and int(h.get("recognized_amount") or 0) != sums[TransactionType.CHARGE]:
            recognized = int(h.get("recognized_amount") or 0)
            bad(Mismatch("reservation", subject + " recognized", recognized, sums[TransactionType.CHARGE]))
        if int(h.get("refunded_amount") or 0) != sums[TransactionType.REFUND]:
            refunded = int(h.get("refunded_amount") or 0)
            bad(Mismatch("reservation", subject + " refunded", refunded, sums[TransactionType.REFUND]))
    for rkey in sorted(set(ledger.by_resv) - seen_resv):
        sums = ledger.reservation(rkey, seq0[keys.partition_of(rkey[0])])
        open_ledger = sums[TransactionType.RESERVE] - sums[TransactionType.CHARGE] - sums[TransactionType.RELEASE]
        # a closed reservation's record expires (BILLING_RESERVATION_CLOSED_TTL_SECONDS); an open one never does
        if sums["reserves"] > 0 and open_ledger > 0:
            bad(Mismatch("reservation", "user {} service {} order {} missing in Redis".format(*rkey), None, sums))

    progress("compare reservations", len(reservations), len(reservations))

    users = _users_by_partition(keys, ledger.by_user)
    for p, (_key, raw_totals, last_id) in enumerate(totals_rows):
        totals = {_s(k): int(v) for k, v in raw_totals.items()}
        for name, kind in TOTALS.items():
            expected = ledger.partition_total(kind, users.get(p, []), last_id)
            if totals.get(name, 0) != expected:
                bad(Mismatch("totals", f"partition {p} {name}", totals.get(name, 0), expected))
    # Each transfer is counted out of one partition, then into one or back to its sender; what is neither yet
    # is in transit. At one instant: out - in - reversed of all partitions = the money in transit. A cluster's
    # partitions are read at instants of their own: there each transit is checked against the ledger instead.
    moved = {
        name: sum(t.get(name, 0) for t in all_totals) for name in (TRANSFERS_OUT, TRANSFERS_IN, TRANSFERS_REVERSED)
    }
    if cluster:
        for mismatch in transit_mismatches(keys, books, legs):
            bad(mismatch)
    elif moved[TRANSFERS_OUT] - moved[TRANSFERS_IN] - moved[TRANSFERS_REVERSED] != in_transit:
        transit = "transfers_in vs transfers_out of all partitions"  # out - in - reversed vs money in transit
        bad(
            Mismatch(
                "totals", transit, moved[TRANSFERS_OUT] - moved[TRANSFERS_IN] - moved[TRANSFERS_REVERSED], in_transit
            )
        )
    # In the ledger: a transfer within a partition is its two transactions; one between partitions, its legs.
    for mismatch in transfer_mismatches(legs):
        bad(mismatch)
    cross = {kind: sum(int(d["amount"]) for d in legs if d["type"] == kind) for kind in TRANSFER_KINDS}
    sent = ledger.total(TransactionType.TRANSFER_OUT, EVERY_ID) - cross[TransactionType.TRANSFER_OUT]
    received = ledger.total(TransactionType.TRANSFER_IN, EVERY_ID) - cross[TransactionType.TRANSFER_IN]
    if sent != received:
        bad(Mismatch("ledger", "transfers out vs in within partitions", sent, received))
    return report


# ---- rebuild ---------------------------------------------------------------------------------


def open_transfers(keys: RedisKeys, legs: list[dict[str, Any]]) -> dict[int, dict[str, Any]]:
    """The transfers between partitions the ledger holds the debit of and neither the credit nor the
    reversal: transfer id -> its transit as lua/transfer_debit.lua writes it (naming no idempotency record:
    rebuild restores none), for the recovery loop to complete."""
    closed = {int(d["transfer_id"]) for d in legs if d["type"] != TransactionType.TRANSFER_OUT}
    out: dict[int, dict[str, Any]] = {}
    for doc in legs:
        transfer_id = int(doc["transfer_id"])
        if doc["type"] != TransactionType.TRANSFER_OUT or transfer_id in closed:
            continue
        sender, recipient = int(doc["user_id"]), int(doc["counterparty_user_id"])
        created_at = str(_ms_of(doc["created_at"]))
        txn = {
            "id": str(transfer_id),
            "type": str(doc["type"]),
            "user_id": str(sender),
            "amount": str(int(doc["amount"])),
            "available_after": str(int(doc["available_after"])),
            "reserved_after": str(int(doc["reserved_after"])),
            "created_at": created_at,
            "counterparty_user_id": str(recipient),
            "transfer_id": str(transfer_id),
        }
        if doc.get("comment"):
            txn["comment"] = str(doc["comment"])
        transfer = {
            "id": str(transfer_id),
            "from_user_id": str(sender),
            "to_user_id": str(recipient),
            "amount": txn["amount"],
            "comment": str(doc.get("comment") or ""),
            "from_partition": str(keys.partition_of(sender)),
            "to_partition": str(keys.partition_of(recipient)),
            "created_at": created_at,
        }
        balance = {"user_id": str(sender), "available": txn["available_after"], "reserved": txn["reserved_after"]}
        out[transfer_id] = {
            "transfer": transfer,
            "record": "",
            "fingerprint": "",
            "lang": "",
            "balance": balance,
            "transaction": txn,
        }
    return out


def _ms_of(value: Any) -> int:
    return datetime_to_ms(value) if isinstance(value, datetime) else int(value)


def _users_by_partition(keys: RedisKeys, users: Iterable[int]) -> dict[int, list[int]]:
    out: dict[int, list[int]] = defaultdict(list)
    for user_id in users:
        out[keys.partition_of(user_id)].append(user_id)
    return out


async def redis_has_accounts(redis: RedisClient, keys: RedisKeys) -> bool:
    async for _key in scan_keys(redis, keys, keys.account_pattern()):
        return True
    return False


def _reservation(key: ResvKey, rows: dict[str, dict[str, int]]) -> ReservationRecord:
    """A reservation as its reserve, charge, release and refund transactions left it."""
    reserve = rows[TransactionType.RESERVE]
    none = {"total": 0, "n": 0, "last": reserve["first"]}
    charge = rows.get(TransactionType.CHARGE, none)
    release = rows.get(TransactionType.RELEASE, none)
    refund = rows.get(TransactionType.REFUND, none)
    open_amount = reserve["total"] - charge["total"] - release["total"]
    recognized = None
    expires_at = reserve.get("expires_at") or None
    updated_at = max(reserve["first"], charge["last"], release["last"], refund["last"])
    if open_amount > 0:
        status = "reserved"
    elif charge["n"] > 0:
        status, recognized = "recognized", charge["total"]
    elif release.get("expired"):
        status = "expired"
        updated_at = expires_at or updated_at  # an expired reservation is updated at its deadline
    else:
        status = "cancelled"
    return ReservationRecord(
        *key,
        reserve["total"],
        status,
        recognized,
        reserve["first"],
        updated_at,
        expires_at,
        refunded_amount=refund["total"],
    )


async def _delete_matching(
    redis: RedisClient, keys: RedisKeys, patterns: Iterable[str], progress: Progress = no_progress
) -> None:
    deleted = 0
    for pattern in patterns:
        batch = []
        async for key in scan_keys(redis, keys, pattern):
            batch.append(key)
            if len(batch) >= CHUNK:
                await redis.delete(*batch)
                deleted += len(batch)
                progress("clear Redis (keys deleted)", deleted, None)
                batch = []
        if batch:
            await redis.delete(*batch)
            deleted += len(batch)
    progress("clear Redis (keys deleted)", deleted, deleted)


async def rebuild(
    redis: RedisClient,
    keys: RedisKeys,
    store: LedgerStore,
    force: bool = False,
    progress: Progress = no_progress,
    closed_ttl_seconds: int = default("reservation_closed_ttl_seconds"),
    recognized_ttl_seconds: int = default("reservation_recognized_ttl_seconds"),
) -> RebuildReport:
    """Restore balances, reservations (open ones with their expiry index; closed ones whose record's TTL, counted
    from their closing, has not run out), the catalog, totals and meta into Redis from the ledger."""
    if await redis_has_accounts(redis, keys):
        if not force:
            raise RedisNotEmpty("Redis already holds accounts under this prefix; use --force to overwrite them")
        await _delete_matching(redis, keys, [keys.account_pattern(), keys.reservation_pattern()], progress)
        await redis.delete(
            *[key for p in keys.all() for key in (keys.totals(p), keys.services(p), keys.transits(p), keys.expiry(p))]
        )
    ledger = await load_ledger(store, EVERY_ID, progress)
    _largest, clock = await store.last_transaction()
    services = await store.service_names()
    report = RebuildReport(services=len(services))
    restore = Restore(redis, keys, closed_ttl_seconds=closed_ttl_seconds, recognized_ttl_seconds=recognized_ttl_seconds)
    now_s, now_us = await redis.time()
    now_ms = max(clock, now_s * 1000 + now_us // 1000)  # what is left of a closed record's TTL counts from now
    await restore.load()

    pipe = redis.pipeline(transaction=False)
    pending = 0

    async def flush(force_now: bool = False) -> None:
        nonlocal pipe, pending
        if pending and (force_now or pending >= CHUNK):
            await pipe.execute()
            pipe, pending = redis.pipeline(transaction=False), 0

    users = sorted(ledger.by_user)
    for user_id in users:
        available, reserved, _n = ledger.account(user_id, EVERY_ID)
        restore.account(pipe, user_id, available, reserved)
        report.accounts += 1
        pending += 1
        if report.accounts % CHUNK == 0:
            progress("write accounts to Redis", report.accounts, len(users))
        await flush()
    progress("write accounts to Redis", report.accounts, len(users))
    orders = sorted(ledger.by_resv)
    for done, rkey in enumerate(orders, 1):
        if done % CHUNK == 0:
            progress("write reservations to Redis", done, len(orders))
        rows = ledger.by_resv[rkey]
        if TransactionType.RESERVE not in rows:
            continue
        reservation = _reservation(rkey, rows)
        if not restore.reservation(pipe, reservation, now_ms):
            continue  # closed so long ago that its record would have expired
        report.reservations += 1
        report.open_reservations += reservation.status == "reserved"
        pending += 1
        await flush()
    progress("write reservations to Redis", len(orders), len(orders))
    restore.services(pipe, services)
    for transfer_id, transit in open_transfers(keys, await store.transfer_legs()).items():
        restore.transit(pipe, keys.partition_of(int(transit["transfer"]["from_user_id"])), transfer_id, transit)
        report.transits += 1
    by_partition = _users_by_partition(keys, ledger.by_user)  # partitions without users have nothing to restore
    for p, members in sorted(by_partition.items()):
        restore.totals(
            pipe, p, {name: ledger.partition_total(kind, members, EVERY_ID) for name, kind in TOTALS.items()}
        )
        pending += 1
    await flush(force_now=True)
    # ids and times must go on from each partition's last ones, never repeat them (a partition's clock may
    # take the ledger's latest time: it only has to never go back)
    for p, members in sorted(by_partition.items()):
        last = max(ledger.last_by_user[u] for u in members)
        seq, report.clock = await restore.meta(p, last // MAX_PARTITIONS, clock)
        report.seq = max(report.seq, seq)
    return report
