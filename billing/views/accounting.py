"""Accounting views over the MongoDB ledger: a user's balance at a moment, and a user's monthly statement.

Both read only transactions up to the projection watermark of the user's partition (billing/projection/
watermark.py), as the history does: every id up to it is in MongoDB, so the transactions read are a prefix
of the user's ledger, and a balance read from them is one the account really had (at most the history's
freshness behind). A transaction's `available_after`/`reserved_after` is the balance right after it, so a
balance at a moment is that of the user's last transaction at or before it, by (created_at, _id), read from
the user_created index. That order is the order the scripts wrote them: a user's ids all come from the
user's partition, whose ids rise and whose clock never goes back (lua/_prelude.lua).
"""

from __future__ import annotations

import csv
import io
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from bson.int64 import Int64

from billing.core.config import Settings
from billing.core.errors import ApiError
from billing.core.money import format_kopecks
from billing.core.parsing import INT64_MAX, ParseError, accept_media, field_error, timestamp
from billing.core.timefmt import datetime_to_ms, format_ms, load_zone, ms_to_datetime
from billing.core.transactions import TRANSACTION_TYPES, TransactionType
from billing.infra.pipelines import load_pipeline
from billing.ledger.scripts import Ledger
from billing.projection.store import TRANSACTION_INDEXES, TRANSACTIONS
from billing.projection.watermark import ProjectionWatermark
from billing.views.csv_cells import text_cell
from billing.views.report_month import Month, parse_month
from billing.views.reports import LINE_END, kopecks

STATEMENT = load_pipeline("statement")  # reports/statement.jsonc
# The index both the balance lookups and the statement use (billing/projection/store.py TRANSACTION_INDEXES).
USER_CREATED = dict(TRANSACTION_INDEXES)["user_created"]
# Latest transactions read per balance lookup: those past the watermark (at most ~1 s of them) are skipped.
LATEST_SCAN = 16
# The bands a balance lookup reads backwards from its moment, each [moment - band, the previous band's start):
# 1 hour, 8 hours, 2.7 days, 21 days, 171 days, 3.7 years, 30 years; then everything before.
BANDS_MS = tuple(3_600_000 * 8**k for k in range(7))
LATEST_FIRST = [("created_at", -1), ("_id", -1)]
OLDEST_FIRST = [("created_at", 1), ("_id", 1)]
CSV_HEADER = (
    "line",
    "id",
    "created_at",
    "type",
    "amount",
    "available_after",
    "reserved_after",
    "service_id",
    "order_id",
    "counterparty_user_id",
    "comment",
)
_TYPES = {kind.value: kind for kind in TransactionType}
_REFERENCES = ("service_id", "order_id", "counterparty_user_id")


def revenue_kopecks(totals: Mapping[str, int]) -> int:
    """Revenue of a set of per-type sums, as the revenue report counts it: charges minus refunds (a missing
    type sums to 0)."""
    return totals.get(TransactionType.CHARGE, 0) - totals.get(TransactionType.REFUND, 0)


def movement(totals: Mapping[str, int]) -> tuple[int, int]:
    """How per-type sums move (available, reserved), by each type's effect (TransactionType)."""
    available = reserved = 0
    for name, total in totals.items():
        kind = _TYPES[name]
        available += kind.available * total
        reserved += kind.reserved * total
    return available, reserved


@dataclass(frozen=True)
class BalanceAt:
    """A balance after the last transaction at or before a moment (kopecks); zeros before the first."""

    user_id: int
    available: int
    reserved: int
    as_of_ms: int

    def body(self) -> dict[str, Any]:
        return {
            "user_id": self.user_id,
            "available": format_kopecks(self.available),
            "reserved": format_kopecks(self.reserved),
            "as_of": format_ms(self.as_of_ms),
        }


@dataclass(frozen=True)
class Statement:
    """One user's month: balances at its start and end, per-type sums and the count of its transactions."""

    user_id: int
    month: Month
    opening: tuple[int, int]
    closing: tuple[int, int]
    totals: dict[str, int]  # every type, 0 where the month has none
    count: int

    def body(self) -> dict[str, Any]:
        def balance(pair: tuple[int, int]) -> dict[str, str]:
            return {"available": format_kopecks(pair[0]), "reserved": format_kopecks(pair[1])}

        return {
            "user_id": self.user_id,
            "month": self.month.label,
            "opening": balance(self.opening),
            "closing": balance(self.closing),
            "totals": {t: format_kopecks(total) for t, total in self.totals.items()},
            "count": self.count,
        }


def parse_at(text: str | None) -> int:
    """`at`: an RFC 3339 timestamp exactly as written (parsing.timestamp), as whole epoch milliseconds
    (floored: stored times are whole milliseconds, so `created_at <= at` is `created_at <= floor(at)`)."""
    try:
        if text is None:
            raise ParseError("is required")
        moment = timestamp(text)
        at_ms = datetime_to_ms(moment)
        ms_to_datetime(at_ms + 1)  # representable as a date, and so is the bound read (the next millisecond)
    except ParseError as exc:
        raise field_error("at", exc) from None
    except OverflowError:
        raise field_error("at", ParseError("is out of range")) from None
    return at_ms


def wants_csv(accept: str | None) -> bool:
    """True when Accept prefers text/csv to application/json: a higher q, or the same q and listed first.
    Ranges with q=0 are refusals; wildcards and malformed elements count as neither (JSON is the default)."""
    best: dict[str, tuple[int, int]] = {}  # media type -> (q in thousandths, -position)
    for position, (media, quality) in enumerate(accept_media(accept)):
        if media not in ("text/csv", "application/json"):
            continue
        if quality > 0 and (media not in best or quality > best[media][0]):
            best[media] = (quality, -position)
    if "text/csv" not in best:
        return False
    return "application/json" not in best or best["text/csv"] > best["application/json"]


class Accounting:
    """ctx.accounting: GET /v1/users/{id}/balance?at= and GET /v1/users/{id}/statements/{month}."""

    def __init__(self, mongo: Any, ledger: Ledger, settings: Settings) -> None:
        self._transactions = mongo[TRANSACTIONS]
        self._ledger = ledger
        self.zone = load_zone(settings.report_tz)
        self._watermarks = [ProjectionWatermark(ledger.redis, ledger.keys, p) for p in ledger.keys.all()]

    def month(self, text: str) -> Month:
        """A "YYYY-MM" month in BILLING_REPORT_TZ (400 validation_error naming `month` otherwise)."""
        return parse_month(text, self.zone)

    async def _upto(self, user_id: int) -> int:
        """The largest id readable for this user: the partition's watermark (no bound before one is published)."""
        upto = await self._watermarks[self._ledger.keys.partition_of(user_id)].read()
        return INT64_MAX if upto is None else upto

    async def _require_account(self, user_id: int) -> None:
        if await self._ledger.balance(user_id) is None:
            raise ApiError("account_not_found", f"User {user_id} has no account")

    # ---- queries (each shaped for the user_created index; tests/stores/test_accounting_indexes.py) -----
    # No hints, and the watermark applied to the rows read rather than in the query filters: on SecantusDB a
    # hinted find walks its whole index (about 60 times slower on 10,000 rows), and an `_id` bound in a
    # filter makes its planner scan the collection; with neither, every query is a range of
    # user_created, as on mongod (reports/statement.jsonc drops the ids past the watermark in its $group).

    @staticmethod
    def before_filter(
        user_id: int, moment: datetime, upto: int | None = None, since: datetime | None = None
    ) -> dict[str, Any]:
        """The user's transactions before `moment` (and at or after `since`); with `upto`, ids up to it only.
        (At or before a moment is before its next millisecond: SecantusDB 0.7's index walk misses rows equal
        to a `$lte` bound.)"""
        window: dict[str, Any] = {"$lt": moment} if since is None else {"$gte": since, "$lt": moment}
        filter_: dict[str, Any] = {"user_id": Int64(user_id), "created_at": window}
        if upto is not None:
            filter_["_id"] = {"$lte": Int64(upto)}
        return filter_

    def latest_cursor(self, filter_: dict[str, Any], limit: int = LATEST_SCAN) -> Any:
        """find() of the last transactions matching, latest first."""
        projection = {"available_after": 1, "reserved_after": 1}
        return self._transactions.find(filter_, projection, sort=LATEST_FIRST, limit=limit)

    def month_cursor(self, user_id: int, month: Month) -> Any:
        """The user's transactions in the month, oldest first."""
        filter_ = {"user_id": Int64(user_id), "created_at": {"$gte": month.start, "$lt": month.end}}
        return self._transactions.find(filter_, sort=OLDEST_FIRST)

    def statement_pipeline(self, user_id: int, month: Month, upto: int) -> list[dict[str, Any]]:
        return STATEMENT.bind(user_id=Int64(user_id), start=month.start, end=month.end, upto=Int64(upto))

    async def _balance_before(self, user_id: int, moment: datetime, upto: int) -> tuple[int, int]:
        """The balance after the user's last transaction up to the watermark before `moment`.

        Read band by band backwards from `moment` (BANDS_MS), the whole rest last: SecantusDB sorts every row a
        range holds (mongod would stop at the first), so one band with a transaction costs what the band holds
        rather than the user's whole history."""
        moment_ms = datetime_to_ms(moment)
        end = moment
        for band_ms in (*BANDS_MS, None):
            since = _at_or_none(moment_ms - band_ms) if band_ms is not None else None
            filter_ = self.before_filter(user_id, end, since=since)
            latest = await self.latest_cursor(filter_).to_list(LATEST_SCAN)
            settled = [doc for doc in latest if int(doc["_id"]) <= upto]
            if not settled and len(latest) == LATEST_SCAN:
                # LATEST_SCAN transactions past the watermark (the projection is behind): bound the ids
                settled = await self.latest_cursor(self.before_filter(user_id, end, upto), 1).to_list(1)
            if settled:
                return int(settled[0]["available_after"]), int(settled[0]["reserved_after"])
            if since is None:
                return 0, 0
            end = since
        return 0, 0  # pragma: no cover - the last band has no lower bound

    async def _month_docs(self, user_id: int, month: Month, upto: int) -> AsyncIterator[dict[str, Any]]:
        async for doc in self.month_cursor(user_id, month):
            if int(doc["_id"]) <= upto:
                yield doc

    # ---- the views ---------------------------------------------------------------------------------

    async def balance_at(self, user_id: int, at: str | None) -> BalanceAt:
        at_ms = parse_at(at)
        await self._require_account(user_id)
        upto = await self._upto(user_id)
        # created_at <= at: stored times are whole milliseconds, so before at's next millisecond
        available, reserved = await self._balance_before(user_id, ms_to_datetime(at_ms + 1), upto)
        return BalanceAt(user_id, available, reserved, at_ms)

    async def statement(self, user_id: int, month_text: str) -> Statement:
        month = self.month(month_text)
        await self._require_account(user_id)
        upto = await self._upto(user_id)
        return await self._statement(user_id, month, upto)

    async def _statement(self, user_id: int, month: Month, upto: int) -> Statement:
        opening = await self._balance_before(user_id, month.start, upto)
        closing = await self._balance_before(user_id, month.end, upto)
        totals = dict.fromkeys(TRANSACTION_TYPES, 0)
        count = 0
        pipeline = self.statement_pipeline(user_id, month, upto)
        groups: list[dict[str, Any]] = await self._transactions.aggregate(pipeline).to_list(None)
        for group in groups:
            totals[str(group["_id"])] = kopecks(group["total"])
            count += int(group["n"])
        return Statement(user_id, month, opening, closing, totals, count)

    async def statement_csv(self, user_id: int, month_text: str) -> AsyncIterator[bytes]:
        """The month's transactions as `;`-separated CSV (the revenue report's quoting), oldest first, between
        an `opening` line (the balance at the month's start) and a `closing` line (at its end); in chunks."""
        month = self.month(month_text)
        await self._require_account(user_id)
        upto = await self._upto(user_id)
        opening = await self._balance_before(user_id, month.start, upto)
        buffer = io.StringIO(newline="")
        writer = csv.writer(buffer, delimiter=";", quotechar='"', quoting=csv.QUOTE_MINIMAL, lineterminator=LINE_END)
        writer.writerow(CSV_HEADER)
        writer.writerow(_frame("opening", month.start, opening))
        balance = opening
        rows = 0
        async for doc in self._month_docs(user_id, month, upto):
            writer.writerow(_transaction_row(doc))
            balance = int(doc["available_after"]), int(doc["reserved_after"])
            rows += 1
            if rows % 1000 == 0:
                yield _take(buffer)
        writer.writerow(_frame("closing", month.end, balance))
        yield _take(buffer)


def _at_or_none(ms: int) -> datetime | None:
    """The moment at epoch ms, or None before year 1 (no lower bound then)."""
    try:
        return ms_to_datetime(ms)
    except OverflowError:
        return None


def _take(buffer: io.StringIO) -> bytes:
    content = buffer.getvalue().encode("utf-8")
    buffer.seek(0)
    buffer.truncate()
    return content


def _frame(line: str, moment: datetime, balance: tuple[int, int]) -> tuple[str, ...]:
    at = format_ms(datetime_to_ms(moment))
    return (line, "", at, "", "", format_kopecks(balance[0]), format_kopecks(balance[1]), "", "", "", "")


def _transaction_row(doc: Mapping[str, Any]) -> tuple[str, ...]:
    references = tuple(str(int(doc[name])) if doc.get(name) is not None else "" for name in _REFERENCES)
    return (
        "transaction",
        str(int(doc["_id"])),
        format_ms(datetime_to_ms(doc["created_at"])),
        str(doc["type"]),
        format_kopecks(int(doc["amount"])),
        format_kopecks(int(doc["available_after"])),
        format_kopecks(int(doc["reserved_after"])),
        *references,
        text_cell(str(doc.get("comment") or "")),
    )
