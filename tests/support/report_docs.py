"""Documents of the agreed MongoDB schema (`transactions`, `services`) written straight into a test DB."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime
from typing import Any

from bson import Int64

_ids = itertools.count(1)


def txn_doc(kind: str, amount: int, when: datetime, service_id: int | None = None, user_id: int = 1) -> dict[str, Any]:
    """One immutable ledger record as the projector writes it (created_at in UTC, ms precision)."""
    doc: dict[str, Any] = {
        "_id": Int64(next(_ids)),
        "type": kind,
        "user_id": Int64(user_id),
        "amount": Int64(amount),
        "available_after": Int64(0),
        "reserved_after": Int64(0),
        "created_at": when.astimezone(UTC).replace(microsecond=when.microsecond // 1000 * 1000),
    }
    if service_id is not None:
        doc["service_id"] = Int64(service_id)
        doc["order_id"] = Int64(next(_ids))
    return doc


class Ledger:
    """Writes reservations' stories the way the money side would record them."""

    def __init__(self, db: Any) -> None:
        self.db = db

    async def add(self, *docs: dict[str, Any]) -> None:
        await self.db.transactions.insert_many(list(docs))

    async def charge(self, service_id: int, amount: int, when: datetime) -> None:
        """reserve → full recognize."""
        await self.add(txn_doc("reserve", amount, when, service_id), txn_doc("charge", amount, when, service_id))

    async def partial(self, service_id: int, reserved: int, charged: int, when: datetime) -> None:
        """reserve → recognize part; the remainder released."""
        await self.add(
            txn_doc("reserve", reserved, when, service_id),
            txn_doc("charge", charged, when, service_id),
            txn_doc("release", reserved - charged, when, service_id),
        )

    async def cancelled(self, service_id: int, amount: int, when: datetime) -> None:
        await self.add(txn_doc("reserve", amount, when, service_id), txn_doc("release", amount, when, service_id))

    async def refund(self, service_id: int, amount: int, when: datetime) -> None:
        """A refund of part of an earlier charge (its reservation's other records are left out: the report
        reads charges and refunds only)."""
        await self.add(txn_doc("refund", amount, when, service_id))

    async def reserved(self, service_id: int, amount: int, when: datetime) -> None:
        await self.add(txn_doc("reserve", amount, when, service_id))

    async def name(self, service_id: int, name: str) -> None:
        await self.db.services.replace_one(
            {"_id": Int64(service_id)}, {"_id": Int64(service_id), "name": name, "seq": Int64(1)}, upsert=True
        )
