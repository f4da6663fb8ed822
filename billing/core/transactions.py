"""The transaction types the ledger records, each with how it moves an account, defined once.

The Lua scripts write these types (lua/*.lua `new_txn`); tests/unit/test_transaction_types.py holds the two
lists equal.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any

# The running totals (each ledger partition's totals hash, lua/_prelude.lua TOTAL_FIELDS) that conservation
# checks compare: per partition, available + reserved of its accounts = deposited - withdrawn - revenue +
# refunded + transfers_in - transfers_out + transfers_reversed; over all partitions, transfers_out -
# transfers_in - transfers_reversed is the money in transit (debited, not yet credited nor reversed).
DEPOSITED, WITHDRAWN, REVENUE, REFUNDED = "deposited", "withdrawn", "revenue", "refunded"
TRANSFERS_IN, TRANSFERS_OUT, TRANSFERS_REVERSED = "transfers_in", "transfers_out", "transfers_reversed"


class TransactionType(StrEnum):
    """A type, and its effect on the account it is recorded for: kopecks of `amount` times `available` and
    `reserved` (+1, -1 or 0) move each balance field; `total` names the running total it adds to (revenue
    and refunded: what the revenue report nets); `of_reservation`: it belongs to a reservation (carries
    service and order)."""

    available: int
    reserved: int
    total: str | None
    of_reservation: bool

    def __new__(cls, value: str, available: int, reserved: int, total: str | None, of_reservation: bool) -> Any:
        member = str.__new__(cls, value)
        member._value_ = value
        member.available, member.reserved = available, reserved
        member.total, member.of_reservation = total, of_reservation
        return member

    DEPOSIT = ("deposit", 1, 0, DEPOSITED, False)
    WITHDRAWAL = ("withdrawal", -1, 0, WITHDRAWN, False)
    TRANSFER_IN = ("transfer_in", 1, 0, TRANSFERS_IN, False)
    TRANSFER_OUT = ("transfer_out", -1, 0, TRANSFERS_OUT, False)
    # A transfer between partitions the recipient's partition could not credit, given back to the sender.
    TRANSFER_REVERSAL = ("transfer_reversal", 1, 0, TRANSFERS_REVERSED, False)
    RESERVE = ("reserve", -1, 1, None, True)
    CHARGE = ("charge", 0, -1, REVENUE, True)
    RELEASE = ("release", 1, -1, None, True)
    # Part or all of a recognized reservation's charge given back to the user's available balance.
    REFUND = ("refund", 1, 0, REFUNDED, True)


TRANSACTION_TYPES: tuple[str, ...] = tuple(t.value for t in TransactionType)
RESERVATION_TYPES: tuple[str, ...] = tuple(t.value for t in TransactionType if t.of_reservation)
# running total -> the type it sums
TOTALS: dict[str, TransactionType] = {t.total: t for t in TransactionType if t.total is not None}
