"""Ledger documents in the agreed MongoDB schema, for read-side tests that run without the projector."""

from __future__ import annotations

import random
from typing import Any

from bson import Int64

from billing.core.timefmt import ms_to_datetime
from billing.core.transactions import TRANSACTION_TYPES
from billing.projection.store import LedgerStore

BASE_MS = 1_790_000_000_000  # 2026-09-21T14:13:20Z
SORTS = [("created_at", "desc"), ("created_at", "asc"), ("amount", "desc"), ("amount", "asc")]


def txn(
    txn_id: int,
    user_id: int,
    txn_type: str,
    amount: int,
    created_ms: int,
    *,
    available_after: int = 0,
    reserved_after: int = 0,
    **refs: Any,
) -> dict[str, Any]:
    """One `transactions` document; refs: comment, service_id, order_id, counterparty_user_id, service_name."""
    doc: dict[str, Any] = {
        "_id": Int64(txn_id),
        "type": txn_type,
        "user_id": Int64(user_id),
        "amount": Int64(amount),
        "available_after": Int64(available_after),
        "reserved_after": Int64(reserved_after),
        "created_at": ms_to_datetime(created_ms),
    }
    for name, value in refs.items():
        if value is not None:
            doc[name] = value if isinstance(value, str) else Int64(value)
    return doc


def ledger(count: int, users: tuple[int, ...] = (1, 2), seed: int = 7) -> list[dict[str, Any]]:
    """Interleaved users; created_at ties (three ids per millisecond) and amount ties (five amounts)."""
    rng = random.Random(seed)
    docs = []
    for txn_id in range(1, count + 1):
        docs.append(
            txn(
                txn_id,
                users[txn_id % len(users)],
                TRANSACTION_TYPES[txn_id % len(TRANSACTION_TYPES)],
                rng.choice([100, 250, 250, 999, 100_000_00]),
                BASE_MS + txn_id // 3,
            )
        )
    return docs


async def create_history_indexes(mongo: Any) -> None:
    """The agreed indexes, made as the projector makes them."""
    await LedgerStore(mongo).ensure_indexes()


async def insert(mongo: Any, docs: list[dict[str, Any]]) -> None:
    await mongo["transactions"].insert_many(docs, ordered=False)
