"""The MongoDB ledger: schema, indexes, the projector's writes, recovery's sums and the console's look-ups."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from bson.int64 import Int64
from pymongo import ASCENDING, DESCENDING
from pymongo.errors import BulkWriteError, DuplicateKeyError
from pymongo.write_concern import WriteConcern

from billing.core.timefmt import datetime_to_ms, ms_to_datetime
from billing.infra.pipelines import load_pipeline

DUPLICATE_KEY = 11000
# The collections of the ledger database (every other module names them through these).
TRANSACTIONS, SERVICES = "transactions", "services"
# {_id: partition, top: the largest transaction id of the partition projected}: raised by the projector (at most
# once a second: billing/projection/projector.py TOPS_EVERY_SECONDS), so the sequence check
# (billing/projection/seq_guard.py) reads each partition's largest id in one small find instead of searching
# `transactions` for ids of one residue.
PARTITION_TOPS = "partition_tops"

# Stream record fields (strings) that become Int64 in MongoDB, and those kept as strings.
INT_FIELDS = (
    "user_id",
    "amount",
    "available_after",
    "reserved_after",
    "service_id",
    "order_id",
    "counterparty_user_id",
    "transfer_id",  # a transfer between partitions: its transfer_out's id, on its credit or reversal too
)
STR_FIELDS = ("type", "comment", "service_name", "reason")  # reason: "expired" on a release of an expired reservation
# Set by the projector, not carried by the outbox (billing/core/chain.py): the transaction's hash-chain link.
HASH = "hash"

# A user's transactions in id order: their ids and times both rise (one partition's sequence and clock, which
# never goes back: lua/_prelude.lua), so the user_created index reads them in that order.
USER_ORDER = [("user_id", ASCENDING), ("created_at", ASCENDING), ("_id", ASCENDING)]
USER_LATEST_FIRST = [("created_at", DESCENDING), ("_id", DESCENDING)]
OLDEST_FIRST = [("created_at", ASCENDING), ("_id", ASCENDING)]
TRANSACTION_INDEXES: list[tuple[str, list[tuple[str, int]]]] = [
    ("user_created", USER_ORDER),
    ("user_amount", [("user_id", ASCENDING), ("amount", ASCENDING), ("_id", ASCENDING)]),
    ("type_created", [("type", ASCENDING), ("created_at", ASCENDING)]),
    # The console's order look-up: one order's reserve, charge, release and refunds, whoever's they are.
    ("service_order", [("service_id", ASCENDING), ("order_id", ASCENDING), *OLDEST_FIRST]),
]
# Recovery's aggregations (reports/*.jsonc say what each returns).
USER_SUMS = load_pipeline("user_sums")
RESERVATION_SUMS = load_pipeline("reservation_sums")
LAST_TRANSACTION = load_pipeline("last_transaction")


def transaction_document(record: Mapping[str, Any]) -> dict[str, Any]:
    """One outbox transaction record (string values) -> its `transactions` document."""
    doc: dict[str, Any] = {"_id": Int64(int(record["id"]))}
    for name in STR_FIELDS:
        value = record.get(name)
        if value is not None and value != "":
            doc[name] = str(value)
    for name in INT_FIELDS:
        value = record.get(name)
        if value is not None and value != "":
            doc[name] = Int64(int(value))
    for required in ("type", "user_id", "amount", "available_after", "reserved_after"):
        if required not in doc:
            raise ValueError(f"transaction record without {required}")
    doc["created_at"] = ms_to_datetime(int(record["created_at"]))
    if record.get("expires_at"):  # a reserve's deadline
        doc["expires_at"] = ms_to_datetime(int(record["expires_at"]))
    return doc


def _comparable(doc: Mapping[str, Any]) -> dict[str, Any]:
    """A document's content as plain values (MongoDB may answer Int64 as int, dates with or without tz), without
    its hash: a replay of one transaction is the same transaction whatever link it got (`billing verify` checks
    the links)."""
    return {k: datetime_to_ms(v) if isinstance(v, datetime) else v for k, v in doc.items() if k != HASH}


@dataclass(frozen=True)
class ServiceName:
    """A catalog change: the name of a service as of stream position `seq`."""

    service_id: int
    name: str
    seq: int


class LedgerStore:
    """The `transactions` and `services` collections, as the write side and recovery use them."""

    def __init__(self, db: Any) -> None:
        self.db = db
        # The projector acknowledges outbox entries once MongoDB confirms; a confirmation must mean
        # "on disk" (journaled), or a MongoDB crash right after it loses history for good.
        durable = WriteConcern(w=1, j=True)
        self.transactions = db.get_collection(TRANSACTIONS, write_concern=durable)
        self.services = db.get_collection(SERVICES, write_concern=durable)
        self.partition_tops = db.get_collection(PARTITION_TOPS, write_concern=durable)

    async def ensure_indexes(self) -> None:
        for name, keys in TRANSACTION_INDEXES:
            await self.transactions.create_index(keys, name=name)

    async def ping(self) -> None:
        await self.db.command("ping")

    # ---- the projector's writes ------------------------------------------------------------

    async def insert_transactions(self, docs: list[dict[str, Any]]) -> tuple[int, int]:
        """Insert ledger documents; ones already there are skipped. Returns (inserted, duplicates)."""
        if not docs:
            return 0, 0
        try:
            result = await self.transactions.insert_many(docs, ordered=False)
            return len(result.inserted_ids), 0
        except BulkWriteError as exc:
            details = exc.details or {}
            errors = details.get("writeErrors", [])
            if details.get("writeConcernErrors") or any(e.get("code") != DUPLICATE_KEY for e in errors):
                raise
            return int(details.get("nInserted", len(docs) - len(errors))), len(errors)

    async def conflicting(self, docs: list[dict[str, Any]]) -> list[tuple[dict[str, Any], dict[str, Any]]]:
        """(document, the stored one) for each document whose id MongoDB holds with other content."""
        stored = {
            int(d["_id"]): d async for d in self.transactions.find({"_id": {"$in": [doc["_id"] for doc in docs]}})
        }
        out = []
        for doc in docs:
            there = stored.get(int(doc["_id"]))
            if there is not None and _comparable(there) != _comparable(doc):
                out.append((doc, there))
        return out

    async def upsert_service_names(self, changes: Iterable[ServiceName]) -> int:
        """Set each service's name unless the stored one comes from a later stream position."""
        written = 0
        for change in changes:
            seq = Int64(change.seq)
            for _attempt in range(2):
                try:
                    result = await self.services.update_one(
                        {"_id": Int64(change.service_id), "seq": {"$lt": seq}},
                        {"$set": {"name": change.name, "seq": seq}},
                        upsert=True,
                    )
                    written += 1 if (result.modified_count or result.upserted_id is not None) else 0
                    break
                except DuplicateKeyError:
                    # The document exists with seq >= ours (we lost), or another writer inserted it just
                    # now: one more try tells which.
                    continue
        return written

    async def raise_partition_tops(self, tops: Mapping[int, int]) -> None:
        """Raise each partition's largest projected transaction id to the given one (never lower it)."""
        for partition, top in sorted(tops.items()):
            for _attempt in range(2):
                try:
                    await self.partition_tops.update_one({"_id": partition}, {"$max": {"top": Int64(top)}}, upsert=True)
                    break
                except DuplicateKeyError:
                    continue  # another projector inserted it just now: raise it once more

    async def largest_ids(self) -> dict[int, int]:
        """The largest transaction id projected of each partition that has one."""
        return {int(d["_id"]): int(d["top"]) async for d in self.partition_tops.find({})}

    # ---- recovery's reads -------------------------------------------------------------------

    async def sums_by_user(self) -> list[tuple[int, str, int, int, int]]:
        """(user_id, type, sum of amount, count, largest id) over the whole ledger."""
        rows = await self.transactions.aggregate(USER_SUMS.bind()).to_list(None)
        return [(int(r["_id"]["u"]), str(r["_id"]["t"]), int(r["total"]), int(r["n"]), int(r["last"])) for r in rows]

    async def sums_by_reservation(self) -> list[dict[str, int | str]]:
        """Per (user, service, order, type) of reserve/charge/release/refund: sum, count, first and last time (ms),
        the deadline (ms; 0 when there is none) and whether a release was of an expired reservation."""
        rows = await self.transactions.aggregate(RESERVATION_SUMS.bind()).to_list(None)
        return [
            {
                "user_id": int(r["_id"]["u"]),
                "service_id": int(r["_id"]["s"]),
                "order_id": int(r["_id"]["o"]),
                "type": str(r["_id"]["t"]),
                "total": int(r["total"]),
                "n": int(r["n"]),
                "first": datetime_to_ms(r["first"]),
                "last": datetime_to_ms(r["last"]),
                "expires_at": datetime_to_ms(r["expires_at"]) if r.get("expires_at") is not None else 0,
                "expired": int(r.get("expired") or 0),
            }
            for r in rows
        ]

    async def transfer_legs(self) -> list[dict[str, Any]]:
        """The transactions of transfers between partitions (those with a transfer_id): their debit, credit or
        reversal, with every field."""
        found: list[dict[str, Any]] = await self.transactions.find({"transfer_id": {"$exists": True}}).to_list(None)
        return found

    async def transactions_after(self, txn_id: int) -> list[dict[str, Any]]:
        """Ledger documents with an id above txn_id (recent ones), in id order."""
        cursor = self.transactions.find({"_id": {"$gt": Int64(txn_id)}}).sort("_id", ASCENDING)
        found: list[dict[str, Any]] = await cursor.to_list(None)
        return found

    async def max_transaction_id(self) -> int:
        """The highest transaction id in the ledger (0 when empty): one step down the _id index."""
        doc = await self.transactions.find_one({}, {"_id": 1}, sort=[("_id", -1)])
        return int(doc["_id"]) if doc is not None else 0

    async def last_transaction(self) -> tuple[int, int]:
        """(highest transaction id, latest created_at in ms); (0, 0) for an empty ledger."""
        rows = await self.transactions.aggregate(LAST_TRANSACTION.bind()).to_list(None)
        if not rows or rows[0].get("id") is None:
            return 0, 0
        return int(rows[0]["id"]), datetime_to_ms(rows[0]["at"])

    async def service_names(self) -> dict[int, str]:
        return {int(d["_id"]): str(d["name"]) async for d in self.services.find({}, {"_id": 1, "name": 1})}

    # ---- the hash chain ----------------------------------------------------------------------------

    async def previous_link(
        self, user_id: int, created_at: datetime, txn_id: int, later: int = 0
    ) -> tuple[bool, str | None]:
        """The user's transaction before (created_at, txn_id): (whether there is one, its hash). Read from the
        user_created index backwards, skipping those at the same moment with larger ids: `later` of them at
        most are expected (a replayed batch's own), so one query of `later + 1` rows usually answers."""
        wanted = later + 1
        found = await self.latest_first(user_id, created_at).limit(wanted).to_list(wanted)
        for doc in found:
            if int(doc["_id"]) < txn_id:
                return True, doc.get(HASH)
        if len(found) < wanted:
            return False, None
        cursor = self.latest_first(user_id, created_at).batch_size(100)  # more than expected: read on
        try:
            async for doc in cursor:
                if int(doc["_id"]) < txn_id:
                    return True, doc.get(HASH)
        finally:
            await cursor.close()
        return False, None

    def latest_first(self, user_id: int, created_at: datetime) -> Any:
        """A cursor over the user's transactions at or before a moment (their ids and hashes), latest first."""
        bound = ms_to_datetime(datetime_to_ms(created_at) + 1)  # at or before: SecantusDB misses rows equal to $lte
        filter_ = {"user_id": Int64(user_id), "created_at": {"$lt": bound}}
        return self.transactions.find(filter_, {HASH: 1}, sort=USER_LATEST_FIRST)

    def in_chain_order(self, user_id: int | None = None, batch_size: int = 1000) -> Any:
        """A streaming cursor over every transaction (or one user's) by user, each user's in id order: the
        user_created index read in its own order (no sort stage), never hinted (SecantusDB would walk a hinted
        index whole even for one user)."""
        filter_: dict[str, Any] = {} if user_id is None else {"user_id": Int64(user_id)}
        return self.transactions.find(filter_, sort=USER_ORDER).batch_size(batch_size)

    # ---- the console's look-ups ----------------------------------------------------------------------

    def transaction_cursor(self, txn_id: int) -> Any:
        """The transaction with this id: the _id index."""
        return self.transactions.find({"_id": Int64(txn_id)}).limit(1)

    async def transaction(self, txn_id: int) -> dict[str, Any] | None:
        found: list[dict[str, Any]] = await self.transaction_cursor(txn_id).to_list(1)
        return found[0] if found else None

    def order_cursor(self, service_id: int, order_id: int, limit: int) -> Any:
        """The transactions of one (service, order), oldest first, at most `limit`: the service_order index."""
        filter_ = {"service_id": Int64(service_id), "order_id": Int64(order_id)}
        return self.transactions.find(filter_, sort=OLDEST_FIRST, limit=limit)

    async def order_transactions(self, service_id: int, order_id: int, limit: int) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = await self.order_cursor(service_id, order_id, limit).to_list(limit)
        return found

    async def count_transactions(self) -> int:
        count: int = await self.transactions.count_documents({})
        return count
