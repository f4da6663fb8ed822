"""The user page's state, all in the query string: filters, sort, page stack; and its links."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import date, datetime, time, timedelta
from urllib.parse import urlencode
from zoneinfo import ZoneInfo

from billing.core.parsing import ParseError, calendar_date, id_text
from billing.core.timefmt import datetime_to_ms, format_ms
from billing.core.transactions import TRANSACTION_TYPES
from billing.views.history import ORDERS, SORTS

PAGE_SIZE = 20


class BadState(ValueError):
    """A query parameter the page cannot use; the text key names the message to show."""

    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


def parse_user_id(raw: str) -> int:
    try:
        return id_text(raw)
    except ParseError:
        raise BadState("bad_user_id") from None


def midnight(day: date, zone: ZoneInfo) -> str:
    """The start of `day` in `zone` as RFC 3339 UTC (the instant the API's `from`/`to` take)."""
    return format_ms(datetime_to_ms(datetime.combine(day, time(), tzinfo=zone)))


def _parse_date(raw: str) -> date | None:
    if not raw:
        return None
    try:
        return calendar_date(raw)
    except ParseError:
        raise BadState("bad_dates") from None


@dataclass(frozen=True)
class HistoryState:
    """Everything that decides what the user page shows; a shared link reproduces it exactly."""

    user_id: int
    sort: str = "created_at"
    order: str = "desc"
    types: tuple[str, ...] = ()
    date_from: date | None = None
    # Days in BILLING_REPORT_TZ, as the form says; `to` is inclusive there, the API's `to` is the next midnight
    date_to: date | None = None
    cursor: str = ""
    back: tuple[str, ...] = field(default=())  # cursors of the pages before this one (page 1 has none)
    lang: str = ""

    @classmethod
    def from_query(cls, args: dict[str, list[str]]) -> HistoryState:
        def one(name: str) -> str:
            values = args.get(name) or [""]
            return values[-1]

        sort = one("sort") or "created_at"
        order = one("order") or "desc"
        if sort not in SORTS or order not in ORDERS:
            raise BadState("bad_sort")
        types = tuple(t for t in TRANSACTION_TYPES if t in set(args.get("type", [])))
        date_from, date_to = _parse_date(one("from")), _parse_date(one("to"))
        if date_from and date_to and date_from > date_to:
            raise BadState("bad_dates")
        return cls(
            user_id=parse_user_id(one("user")),
            sort=sort,
            order=order,
            types=types,
            date_from=date_from,
            date_to=date_to,
            cursor=one("cursor"),
            back=tuple(v for v in args.get("back", []) if v),
            lang=one("lang"),
        )

    @property
    def page_number(self) -> int:
        return len(self.back) + 2 if self.cursor else 1

    def api_query(self, zone: ZoneInfo) -> dict[str, str]:
        """The raw query of GET /v1/users/{id}/transactions for this page; the dates are days in `zone`."""
        query = {"sort": self.sort, "order": self.order, "limit": str(PAGE_SIZE)}
        if self.types:
            query["type"] = ",".join(self.types)
        if self.date_from:
            query["from"] = midnight(self.date_from, zone)
        if self.date_to:
            query["to"] = midnight(self.date_to + timedelta(days=1), zone)
        if self.cursor:
            query["cursor"] = self.cursor
        return query

    def url(self) -> str:
        pairs: list[tuple[str, str]] = [("user", str(self.user_id))]
        if self.sort != "created_at":
            pairs.append(("sort", self.sort))
        if self.order != "desc":
            pairs.append(("order", self.order))
        pairs += [("type", t) for t in self.types]
        if self.date_from:
            pairs.append(("from", self.date_from.isoformat()))
        if self.date_to:
            pairs.append(("to", self.date_to.isoformat()))
        pairs += [("back", c) for c in self.back]
        if self.cursor:
            pairs.append(("cursor", self.cursor))
        if self.lang:
            pairs.append(("lang", self.lang))
        return "/console/users?" + urlencode(pairs)

    def first_page(self) -> HistoryState:
        return replace(self, cursor="", back=())

    def cleared(self) -> HistoryState:
        """The same user and sort with no filters, from page 1."""
        return replace(self.first_page(), types=(), date_from=None, date_to=None)

    def sorted_by(self, sort: str) -> HistoryState:
        """Sort by `sort`; choosing the current column again flips the order. Starts from page 1."""
        order = ("asc" if self.order == "desc" else "desc") if sort == self.sort else "desc"
        return replace(self.first_page(), sort=sort, order=order)

    def next_page(self, next_cursor: str) -> HistoryState:
        back = self.back + (self.cursor,) if self.cursor else self.back
        return replace(self, cursor=next_cursor, back=back)

    def previous_page(self) -> HistoryState | None:
        if not self.cursor:
            return None
        if not self.back:
            return self.first_page()
        return replace(self, cursor=self.back[-1], back=self.back[:-1])

    def with_lang(self, lang: str) -> HistoryState:
        return replace(self, lang=lang)
