"""The ledger's hash chain: each transaction's `hash` and the fields of a transaction as the API shows them.

`hash` = hex SHA-256 of the UTF-8 bytes of the previous `hash` of the user's chain (64 hex digits; the
user's first transaction chains from GENESIS) followed by the transaction's canonical JSON: the object of
its CHAIN_FIELDS as a history item shows them (amounts as "12.50", times as RFC 3339 with milliseconds),
null or absent ones left out, keys sorted, no spaces, non-ASCII characters as themselves. A user's chain
runs in id order. The projector computes it (billing/projection/projector.py); `billing verify` checks it
(billing/projection/verify.py).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from datetime import datetime
from typing import Any

import orjson

from billing.core.money import format_kopecks
from billing.core.timefmt import datetime_to_ms, format_ms

GENESIS = "0" * 64
# The fields a transaction's hash covers (the contract names them; a field not listed is not covered).
CHAIN_FIELDS = (
    "id",
    "user_id",
    "type",
    "amount",
    "available_after",
    "reserved_after",
    "created_at",
    "comment",
    "service_id",
    "order_id",
    "counterparty_user_id",
)
REFERENCE_FIELDS = ("service_id", "order_id", "counterparty_user_id")
_REFERENCE_KEYS = frozenset(REFERENCE_FIELDS)


def item_fields(raw: Mapping[str, Any]) -> dict[str, Any]:
    """A transaction's own fields as a history item shows them, from a script's record (strings) or a MongoDB
    document (ints, datetime): the part of the item that is stored, not derived (description, service name)."""
    created = raw["created_at"]
    item: dict[str, Any] = {
        "id": int(raw.get("id", raw.get("_id"))),
        "type": str(raw["type"]),
        "amount": format_kopecks(int(raw["amount"])),
        "available_after": format_kopecks(int(raw["available_after"])),
        "reserved_after": format_kopecks(int(raw["reserved_after"])),
        "created_at": format_ms(datetime_to_ms(created) if isinstance(created, datetime) else int(created)),
        "comment": raw.get("comment") or None,
    }
    if not _REFERENCE_KEYS.isdisjoint(raw.keys()):  # a deposit or withdrawal names none: one set operation
        for name in REFERENCE_FIELDS:
            if raw.get(name) is not None:
                item[name] = int(raw[name])
    return item


def canonical_json(raw: Mapping[str, Any]) -> bytes:
    """The transaction's canonical JSON (UTF-8): what its hash covers after the previous hash.

    orjson writes compact JSON (separators "," and ":") with non-ASCII characters as themselves and escapes
    exactly what Python's json.dumps(ensure_ascii=False) escapes; OPT_SORT_KEYS sorts the (ASCII) keys.
    """
    fields = {"user_id": int(raw["user_id"]), **item_fields(raw)}
    present = {name: value for name in CHAIN_FIELDS if (value := fields.get(name)) is not None}
    return orjson.dumps(present, option=orjson.OPT_SORT_KEYS)


def chain_hash(previous: str, raw: Mapping[str, Any]) -> str:
    """The hash of a transaction whose predecessor in its user's chain has hash `previous` (GENESIS: none)."""
    return hashlib.sha256(previous.encode("ascii") + canonical_json(raw)).hexdigest()
