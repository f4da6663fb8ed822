"""The history read side: one user's transactions from MongoDB, filtered, keyset-paginated, rendered."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from pymongo.errors import OperationFailure

from billing.core.errors import ApiError
from billing.core.parsing import ParseError, choice, choices, small_number, timestamp
from billing.core.timefmt import datetime_to_ms, ms_to_datetime
from billing.core.transactions import TRANSACTION_TYPES
from billing.ledger.scripts import Ledger
from billing.projection.store import SERVICES, TRANSACTIONS
from billing.projection.watermark import ProjectionWatermark
from billing.views.cursor import CursorCodec, query_fingerprint
from billing.views.render import render_ledger_item

SORTS = ("created_at", "amount")
ORDERS = ("desc", "asc")
PARAMETERS = ("sort", "order", "limit", "cursor", "type", "from", "to")
DEFAULT_LIMIT, MAX_LIMIT = 20, 100
BAD_VALUE = 2  # MongoDB's error code for a hint naming no existing index
log = logging.getLogger("billing.views.history")

# One filter and sort for MongoDB's find(): the sort always ends in _id so the order is total.
FindSpec = tuple[dict[str, Any], list[tuple[str, int]]]


@dataclass(frozen=True)
class HistoryQuery:
    """A validated history request. Times are whole milliseconds: start inclusive, end exclusive."""

    user_id: int
    sort: str = "created_at"
    order: str = "desc"
    limit: int = DEFAULT_LIMIT
    types: tuple[str, ...] = ()
    start_ms: int | None = None
    end_ms: int | None = None
    cursor: str | None = None

    def fingerprint(self) -> str:
        """What a cursor is bound to: everything that decides the order and the set, not the page size."""
        return query_fingerprint([self.user_id, self.sort, self.order, list(self.types), self.start_ms, self.end_ms])


def _ceil_ms(moment: datetime) -> int:
    """The first whole millisecond at or after a moment (stored times have millisecond precision)."""
    return datetime_to_ms(moment) + (1 if moment.microsecond % 1000 else 0)


def parse_history_query(user_id: int, query: Mapping[str, str]) -> HistoryQuery:
    """Validate the raw query parameters; every problem found is reported in one 400 validation_error."""
    errors: list[dict[str, str]] = []

    def bad(field: str, message: str) -> None:
        errors.append({"field": field, "message": message})

    for name in sorted(set(query) - set(PARAMETERS)):
        bad(name, f"unknown query parameter; allowed: {', '.join(PARAMETERS)}")
    values: dict[str, Any] = {"sort": "created_at", "order": "desc", "limit": DEFAULT_LIMIT, "type": ()}
    parsers = {
        "sort": lambda text: choice(text, SORTS),
        "order": lambda text: choice(text, ORDERS),
        "limit": lambda text: small_number(text, MAX_LIMIT),
        "type": lambda text: choices(text, TRANSACTION_TYPES),
        "from": timestamp,
        "to": timestamp,
    }
    for name, parse in parsers.items():
        if name in query:
            try:
                values[name] = parse(query[name])
            except ParseError as exc:
                bad(name, str(exc))
    bounds: dict[str, int] = {}
    for name in ("from", "to"):
        if name in values:
            bounds[name] = _ceil_ms(values[name])
            try:
                ms_to_datetime(bounds[name])  # representable as a date (not past 9999-12-31)
            except OverflowError:
                bad(name, "is out of range")
    if "from" in bounds and "to" in bounds and bounds["from"] > bounds["to"]:
        bad("to", "must not be earlier than from")
    if errors:
        raise ApiError("validation_error", "Query parameters are not valid", errors)
    return HistoryQuery(
        user_id=user_id,
        sort=values["sort"],
        order=values["order"],
        limit=values["limit"],
        types=values["type"],
        start_ms=bounds.get("from"),
        end_ms=bounds.get("to"),
        cursor=query.get("cursor"),
    )


def find_specs(q: HistoryQuery, after: tuple[int, int] | None, upto: int | None = None) -> list[FindSpec]:
    """The find() calls that read one page, in order; each matches an index prefix and its sort.

    Without a cursor: one query. After a cursor (value, id): first the rows that tie on the sort value
    with an id beyond the cursor's, then the rows strictly beyond the value. Two simple range queries
    instead of one $or keep every query a plain index range scan on any MongoDB-compatible server.
    `upto` (the projection watermark, billing/projection/watermark.py) keeps out ids that may still have older
    neighbours missing from MongoDB: a page never puts its cursor past a transaction yet to land.
    """
    specs = _find_specs(q, after)
    if upto is not None:
        for filter_, _sort in specs:
            filter_["_id"] = {**filter_.get("_id", {}), "$lte": upto}
    return specs


def _find_specs(q: HistoryQuery, after: tuple[int, int] | None) -> list[FindSpec]:
    direction = -1 if q.order == "desc" else 1
    field = q.sort
    sort = [(field, direction), ("_id", direction)]
    beyond = "$lt" if direction == -1 else "$gt"
    base: dict[str, Any] = {"user_id": q.user_id}
    if q.types:
        base["type"] = q.types[0] if len(q.types) == 1 else {"$in": list(q.types)}
    window: dict[str, Any] = {}
    if q.start_ms is not None:
        window["$gte"] = ms_to_datetime(q.start_ms)
    if q.end_ms is not None:
        window["$lt"] = ms_to_datetime(q.end_ms)
    if after is None:
        return [({**base, "created_at": window} if window else base, sort)]
    value, last_id = after
    if field == "created_at":
        moment = ms_to_datetime(value)
        # The cursor's row lay inside the window, so moving past it only tightens one bound.
        rest = {**window, beyond: moment}
        return [
            ({**base, "created_at": moment, "_id": {beyond: last_id}}, sort),
            ({**base, "created_at": rest}, sort),
        ]
    timed = {"created_at": window} if window else {}
    return [
        ({**base, "amount": value, "_id": {beyond: last_id}, **timed}, sort),
        ({**base, "amount": {beyond: value}, **timed}, sort),
    ]


def index_for(sort: list[tuple[str, int]]) -> list[tuple[str, int]]:
    """The agreed compound index that serves a history sort: (user_id, created_at|amount, _id)."""
    return [("user_id", 1), (sort[0][0], 1), ("_id", 1)]


def sort_value(q: HistoryQuery, doc: Mapping[str, Any]) -> int:
    value = doc[q.sort]
    return datetime_to_ms(value) if isinstance(value, datetime) else int(value)


class History:
    """GET /v1/users/{id}/transactions: reads `transactions` (by its compound indexes) and `services` names."""

    def __init__(self, mongo: Any, ledger: Ledger, secret: str) -> None:
        self._transactions = mongo[TRANSACTIONS]
        self._services = mongo[SERVICES]
        self._ledger = ledger
        # a user's history reads up to the watermark of the user's partition, where all their ids come from
        self._watermarks = [ProjectionWatermark(ledger.redis, ledger.keys, p) for p in ledger.keys.all()]
        self._cursors = CursorCodec(secret)
        self._warned: set[str] = set()

    def cursor_after(self, q: HistoryQuery) -> tuple[int, int] | None:
        return self._cursors.decode(q.cursor, q.fingerprint()) if q.cursor is not None else None

    async def page(self, user_id: int, query: Mapping[str, str], lang: str) -> dict[str, Any]:
        q = parse_history_query(user_id, query)
        after = self.cursor_after(q)
        if await self._ledger.balance(user_id) is None:
            raise ApiError("account_not_found", f"User {user_id} has no account")
        upto = await self._watermarks[self._ledger.keys.partition_of(user_id)].read()
        docs: list[dict[str, Any]] = []
        for filter_, sort in find_specs(q, after, upto):
            wanted = q.limit + 1 - len(docs)  # one more than a page tells whether another page exists
            if wanted <= 0:
                break
            docs += await self._read(filter_, sort, wanted)
        has_more = len(docs) > q.limit
        docs = docs[: q.limit]
        names = await service_names(self._services, docs)
        next_cursor = None
        if has_more:
            last = docs[-1]
            next_cursor = self._cursors.encode(q.fingerprint(), sort_value(q, last), int(last["_id"]))
        return {"items": [render_ledger_item(doc, lang, names) for doc in docs], "next_cursor": next_cursor}

    def find_cursor(self, filter_: dict[str, Any], sort: list[tuple[str, int]], limit: int, hint: bool = True) -> Any:
        """The find() cursor for one spec, hinted to the (user_id, <sort field>, _id) index it is shaped for."""
        cursor = self._transactions.find(filter_, sort=sort, limit=limit)
        if hint:
            cursor.hint(index_for(sort))  # mongomock accepts and ignores hints
        return cursor

    async def _read(self, filter_: dict[str, Any], sort: list[tuple[str, int]], limit: int) -> list[dict[str, Any]]:
        try:
            found: list[dict[str, Any]] = await self.find_cursor(filter_, sort, limit).to_list(limit)
            return found
        except OperationFailure as exc:
            if exc.code != BAD_VALUE or "hint" not in str(exc):
                raise
            # The projector creates the indexes; until it has, the planner picks (slower, same rows).
            index = str(index_for(sort))
            if index not in self._warned:
                self._warned.add(index)
                log.warning("history index %s is missing; querying without a hint", index)
            found = await self.find_cursor(filter_, sort, limit, hint=False).to_list(limit)
            return found


async def service_names(services: Any, docs: list[dict[str, Any]]) -> dict[int, str]:
    """Current catalog names (the `services` collection) of the services these ledger rows mention; a row's
    own snapshot of the name is the fallback (billing/views/render.py)."""
    ids = sorted({int(doc["service_id"]) for doc in docs if doc.get("service_id") is not None})
    if not ids:
        return {}
    found = await services.find({"_id": {"$in": ids}}, {"name": 1}).to_list(len(ids))
    return {int(row["_id"]): row["name"] for row in found if row.get("name")}
