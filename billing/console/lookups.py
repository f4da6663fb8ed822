"""The console's look-ups besides the user page: a transaction by its id, an order by (service id, order id).

Both read the MongoDB ledger through LedgerStore (a transaction by the _id index, an order's transactions by
service_order), so they show what the projector has written (the history's freshness, about 1 s); an order's
reservations come from Redis as GET /v1/reservations reads them, one per user the order's transactions name.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

from billing.core.parsing import ParseError, id_text
from billing.ledger.scripts import Ledger
from billing.projection.store import LedgerStore
from billing.views.render import render_ledger_item, render_reservation

ORDER_SHOWN = 100  # an order's transactions shown at most (a reserve, a charge or release, and its refunds)


class BadLookup(ValueError):
    """Input a look-up cannot use; the text key names the message to show."""

    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


def _id(raw: str, key: str) -> int:
    try:
        return id_text(raw.strip())
    except ParseError:
        raise BadLookup(key) from None


def transaction_id(raw: str) -> int:
    return _id(raw, "bad_transaction_id")


def order_ref(raw_service: str, raw_order: str) -> tuple[int, int]:
    if not raw_service.strip() or not raw_order.strip():
        raise BadLookup("bad_order_ref")
    return _id(raw_service, "bad_order_ref"), _id(raw_order, "bad_order_ref")


def find_target(user: str, transaction: str, service: str, order: str) -> str:
    """Where the home page's search form leads: the user page, a transaction or an order (BadLookup when the
    form holds none of them, more than one, or a malformed id)."""
    kinds = [bool(user.strip()), bool(transaction.strip()), bool(service.strip() or order.strip())]
    if sum(kinds) != 1:
        raise BadLookup("find_one_kind")
    if kinds[0]:
        return "/console/users?" + urlencode({"user": _id(user, "bad_user_id")})
    if kinds[1]:
        return "/console/transactions?" + urlencode({"id": transaction_id(transaction)})
    service_id, order_id = order_ref(service, order)
    return order_url(service_id, order_id)


def order_url(service_id: int, order_id: int) -> str:
    return "/console/orders?" + urlencode({"service": service_id, "order": order_id})


async def transaction_view(store: LedgerStore, ledger: Ledger, txn_id: int, lang: str) -> dict[str, Any] | None:
    """The transaction as a history item (with its user and hash), or None when the ledger has no such id."""
    doc = await store.transaction(txn_id)
    if doc is None:
        return None
    names = await ledger.services()
    return {**render_ledger_item(doc, lang, names), "user_id": int(doc["user_id"])}


@dataclass
class OrderPart:
    """One user's part of an order: their reservation (None when Redis holds no record) and transactions."""

    user_id: int
    reservation: dict[str, Any] | None
    items: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class OrderView:
    service_id: int
    order_id: int
    service_name: str | None
    parts: list[OrderPart]
    more: bool  # more transactions than ORDER_SHOWN

    @property
    def user_ids(self) -> list[int]:
        return [part.user_id for part in self.parts]


async def order_view(store: LedgerStore, ledger: Ledger, service_id: int, order_id: int, lang: str) -> OrderView | None:
    """An order's reservations and transactions, grouped by user in the order they first appear; None when the
    ledger holds no transaction of it."""
    docs = await store.order_transactions(service_id, order_id, ORDER_SHOWN + 1)
    if not docs:
        return None
    names: Mapping[int, str] = await ledger.services()
    parts: dict[int, OrderPart] = {}
    for doc in docs[:ORDER_SHOWN]:
        user_id = int(doc["user_id"])
        if user_id not in parts:
            raw = await ledger.reservation(user_id, service_id, order_id)
            parts[user_id] = OrderPart(user_id, render_reservation(raw) if raw is not None else None)
        parts[user_id].items.append(render_ledger_item(doc, lang, names))
    return OrderView(service_id, order_id, names.get(service_id), list(parts.values()), len(docs) > ORDER_SHOWN)
