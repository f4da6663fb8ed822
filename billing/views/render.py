"""Response bodies: script outcomes and ledger documents rendered with money strings and RFC 3339 times."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from billing.core.chain import item_fields
from billing.core.money import format_kopecks
from billing.core.timefmt import format_ms
from billing.views.descriptions import describe


def render_balance(raw: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "user_id": int(raw["user_id"]),
        "available": format_kopecks(int(raw["available"])),
        "reserved": format_kopecks(int(raw["reserved"])),
    }


def render_transaction(
    raw: Mapping[str, Any], lang: str, service_names: Mapping[int, str] | None = None
) -> dict[str, Any]:
    """A transaction as answers show it, from a script's record (strings) or a MongoDB document (ints, datetime)."""
    item = item_fields(raw)
    if "service_id" in item:
        item["service_name"] = (service_names or {}).get(item["service_id"]) or raw.get("service_name") or None
    if raw.get("reason"):
        item["reason"] = raw["reason"]  # a release of a reservation that expired
    item["description"] = describe(item["type"], item["amount"], lang, item)
    return item


def render_ledger_item(
    doc: Mapping[str, Any], lang: str, service_names: Mapping[int, str] | None = None
) -> dict[str, Any]:
    """A history item: a MongoDB ledger document rendered, with its place in the user's hash chain
    (billing/core/chain.py; null only for a document stored without one)."""
    item = render_transaction(doc, lang, service_names)
    item["hash"] = doc.get("hash")
    return item


def render_reservation(raw: Mapping[str, Any]) -> dict[str, Any]:
    recognized = raw.get("recognized_amount")
    return {
        "user_id": int(raw["user_id"]),
        "service_id": int(raw["service_id"]),
        "order_id": int(raw["order_id"]),
        "amount": format_kopecks(int(raw["amount"])),
        "status": raw["status"],
        "recognized_amount": format_kopecks(int(recognized)) if recognized is not None else None,
        "refunded_amount": format_kopecks(int(raw.get("refunded_amount") or 0)),
        "created_at": format_ms(int(raw["created_at"])),
        "updated_at": format_ms(int(raw["updated_at"])),
        "expires_at": format_ms(int(raw["expires_at"])) if raw.get("expires_at") is not None else None,
    }


_RENDERERS = {
    "balance": render_balance,
    "recipient_balance": render_balance,
    "reservation": render_reservation,
}
_TRANSACTIONS = ("transaction", "recipient_transaction", "release_transaction")
_ORDER = (
    "service_id",
    "name",
    "reservation",
    "balance",
    "transaction",
    "release_transaction",
    "recipient_balance",
    "recipient_transaction",
)


class _Ranks(dict[str, int]):
    """A part's place in the answer; any other part after them all (in the script's order: sorted is stable)."""

    def __missing__(self, key: str) -> int:
        return len(_ORDER)


# (its bound __getitem__ as the sort key: no Python-level call per part)
_RANK = _Ranks({key: rank for rank, key in enumerate(_ORDER)})


def render_outcome_body(body: Mapping[str, Any], lang: str) -> dict[str, Any]:
    """A script's success body with every part in API form."""
    out: dict[str, Any] = {}
    for key in sorted(body, key=_RANK.__getitem__):
        value = body[key]
        if key in _RENDERERS:
            out[key] = _RENDERERS[key](value)
        elif key in _TRANSACTIONS:
            out[key] = render_transaction(value, lang)
        elif key == "service_id":
            out[key] = int(value)
        else:
            out[key] = value
    return out
