"""Response bodies: script outcomes and ledger documents rendered with money strings and RFC 3339 times."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from billing.core.money import format_kopecks
from billing.core.timefmt import datetime_to_ms, format_ms
from billing.views.descriptions import describe

_REFERENCE_FIELDS = ("service_id", "order_id", "counterparty_user_id")


def _ms(value: Any) -> int:
    return datetime_to_ms(value) if isinstance(value, datetime) else int(value)


def render_balance(raw: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "user_id": int(raw["user_id"]),
        "available": format_kopecks(int(raw["available"])),
        "reserved": format_kopecks(int(raw["reserved"])),
    }


def render_transaction(
    raw: Mapping[str, Any], lang: str, service_names: Mapping[int, str] | None = None
) -> dict[str, Any]:
    """A history item from a script's record (strings) or a MongoDB document (ints, datetime)."""
    amount = int(raw["amount"])
    item: dict[str, Any] = {
        "id": int(raw.get("id", raw.get("_id"))),
        "type": raw["type"],
        "amount": format_kopecks(amount),
        "available_after": format_kopecks(int(raw["available_after"])),
        "reserved_after": format_kopecks(int(raw["reserved_after"])),
        "created_at": format_ms(_ms(raw["created_at"])),
        "comment": raw.get("comment") or None,
    }
    for name in _REFERENCE_FIELDS:
        if raw.get(name) is not None:
            item[name] = int(raw[name])
    if "service_id" in item:
        item["service_name"] = (service_names or {}).get(item["service_id"]) or raw.get("service_name") or None
    if raw.get("reason"):
        item["reason"] = raw["reason"]  # a release of a reservation that expired
    item["description"] = describe(item["type"], amount, lang, item)
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


_RANK = {key: rank for rank, key in enumerate(_ORDER)}


def _key_rank(key: str) -> int:
    return _RANK.get(key, len(_ORDER))


def render_outcome_body(body: Mapping[str, Any], lang: str) -> dict[str, Any]:
    """A script's success body with every part in API form."""
    out: dict[str, Any] = {}
    for key in sorted(body, key=_key_rank):
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
