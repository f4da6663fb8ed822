"""The hash-chain link of a transaction, against values computed here independently of billing/core/chain.py."""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime

from bson.int64 import Int64
from hypothesis import given
from hypothesis import strategies as st

from billing.core.chain import CHAIN_FIELDS, GENESIS, canonical_json, chain_hash

# A charge as MongoDB stores it: ints, a datetime, a comment with Cyrillic, an emoji and a quote.
STORED = {
    "_id": Int64(3 * 1024 + 7),
    "user_id": Int64(42),
    "type": "charge",
    "amount": Int64(1250),
    "available_after": Int64(98_750),
    "reserved_after": Int64(0),
    "created_at": datetime(2026, 11, 26, 4, 16, 1, 123_000, tzinfo=UTC),
    "comment": 'Оплата «Продвижение» 🚀 "VIP"',
    "service_id": Int64(7),
    "order_id": Int64(900),
    "service_name": "Продвижение",  # not covered: the contract names the fields that are
}
# Written out by hand: the covered fields as a history item shows them, keys sorted, no spaces, non-ASCII as is.
CANONICAL = (
    '{"amount":"12.50","available_after":"987.50","comment":"Оплата «Продвижение» 🚀 \\"VIP\\"",'
    '"created_at":"2026-11-26T04:16:01.123Z","id":3079,"order_id":900,"reserved_after":"0.00",'
    '"service_id":7,"type":"charge","user_id":42}'
)


def test_the_canonical_json_of_a_stored_transaction_is_spelled_out() -> None:
    assert canonical_json(STORED).decode("utf-8") == CANONICAL


def test_the_first_link_chains_from_64_zeros() -> None:
    expected = hashlib.sha256(("0" * 64 + CANONICAL).encode("utf-8")).hexdigest()
    assert GENESIS == "0" * 64
    assert chain_hash(GENESIS, STORED) == expected


def test_a_later_link_chains_from_the_previous_hash() -> None:
    previous = hashlib.sha256(b"anything").hexdigest()
    assert chain_hash(previous, STORED) == hashlib.sha256((previous + CANONICAL).encode("utf-8")).hexdigest()


def test_a_script_record_and_its_stored_document_give_one_link() -> None:
    """The outbox's strings (epoch ms) and MongoDB's types render to the same item."""
    record = {
        "id": "3079",
        "user_id": "42",
        "type": "charge",
        "amount": "1250",
        "available_after": "98750",
        "reserved_after": "0",
        "created_at": str(int(STORED["created_at"].timestamp() * 1000)),
        "comment": STORED["comment"],
        "service_id": "7",
        "order_id": "900",
    }
    assert canonical_json(record) == canonical_json(STORED)


def test_absent_and_empty_fields_are_left_out() -> None:
    deposit = {
        "_id": 1025,
        "user_id": 1,
        "type": "deposit",
        "amount": 5,
        "available_after": 5,
        "reserved_after": 0,
        "created_at": 0,
        "comment": "",
    }
    assert canonical_json(deposit) == (
        b'{"amount":"0.05","available_after":"0.05","created_at":"1970-01-01T00:00:00.000Z","id":1025,'
        b'"reserved_after":"0.00","type":"deposit","user_id":1}'
    )


def test_a_transfer_covers_its_counterparty() -> None:
    doc = {**STORED, "type": "transfer_out", "counterparty_user_id": 43, "comment": None}
    del doc["service_id"], doc["order_id"]
    covered = json.loads(canonical_json(doc))
    assert covered["counterparty_user_id"] == 43 and "comment" not in covered and "service_id" not in covered
    assert set(covered) <= set(CHAIN_FIELDS)


@given(st.text(st.characters(exclude_categories=("Cs",)), min_size=1, max_size=50))
def test_any_comment_is_encoded_as_json_dumps_would(comment: str) -> None:
    """Whatever the comment, the bytes are those of json.dumps(sort_keys, compact separators, ensure_ascii=False)."""
    doc = {**STORED, "comment": comment}
    fields = json.loads(canonical_json(doc))
    expected = json.dumps(fields, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    assert canonical_json(doc) == expected
