"""Reservation stories (reserve, charge, release) written as ledger documents, for revenue report tests."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime
from typing import Any

from bson import Int64

from billing.timefmt import datetime_to_ms
from tests.support.ledger_docs import txn

_ids = itertools.count(1)


def txn_doc(kind: str, amount: int, when: datetime, service_id: int) -> dict[str, Any]:
    """One `transactions` document of user 1 at `when` (UTC, millisecond precision) for `service_id`."""
    ms = datetime_to_ms(when.astimezone(UTC))
    return txn(next(_ids), 1, kind, amount, ms, service_id=service_id, order_id=next(_ids))


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

    async def reserved(self, service_id: int, amount: int, when: datetime) -> None:
        await self.add(txn_doc("reserve", amount, when, service_id))

    async def name(self, service_id: int, name: str) -> None:
        await self.db.services.replace_one(
            {"_id": Int64(service_id)}, {"_id": Int64(service_id), "name": name, "seq": Int64(1)}, upsert=True
        )
