"""The console's accounting views: a user's monthly statement (with its CSV) and the balance at a moment.

Times a person types or reads are in BILLING_REPORT_TZ, and the page names the zone; the API's are UTC.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from billing.console.display import local_time
from billing.console.text import TEXT
from billing.core.errors import ApiError
from billing.core.money import format_kopecks
from billing.core.parsing import ParseError, id_text
from billing.core.timefmt import format_ms
from billing.views.accounting import Accounting, BalanceAt, Statement

# What <input type="datetime-local"> sends: a wall-clock time without an offset, seconds optional.
LOCAL_TIME = re.compile(r"([0-9]{4})-([0-9]{2})-([0-9]{2})T([0-9]{2}):([0-9]{2})(?::([0-9]{2}))?")


def local_to_rfc3339(text: str, zone: ZoneInfo) -> str:
    """A wall-clock "YYYY-MM-DDTHH:MM[:SS]" in `zone` as RFC 3339 with its offset (ParseError otherwise).
    A time that occurs twice (clocks turned back) is its first occurrence."""
    match = LOCAL_TIME.fullmatch(text)
    try:
        if match is None:
            raise ValueError
        year, month, day, hour, minute, second = (int(group or 0) for group in match.groups())
        moment = datetime(year, month, day, hour, minute, second, tzinfo=zone)
    except ValueError:
        raise ParseError("must be a date and time YYYY-MM-DDTHH:MM") from None
    return moment.isoformat()


async def balance_at_view(accounting: Accounting, user_id: int, raw_at: str, lang: str) -> dict[str, Any]:
    """The user page's lookup: {"balance": BalanceAt, "at_local": …} or {"error": …}."""
    try:
        at = local_to_rfc3339(raw_at, accounting.zone)
        found: BalanceAt = await accounting.balance_at(user_id, at)
    except ParseError:
        return {"error": TEXT[lang]["bad_moment"]}
    except ApiError as exc:
        return {"error": exc.detail}
    return {
        "available": format_kopecks(found.available),
        "reserved": format_kopecks(found.reserved),
        "at_local": local_time(found.as_of_ms, accounting.zone),
        "as_of": format_ms(found.as_of_ms),
    }


def statement_view(statement: Statement, zone: ZoneInfo) -> dict[str, Any]:
    """What the statement page shows: the month's bounds in the zone, the balances and every type's sum."""
    body = statement.body()
    month = statement.month
    return {
        **body,
        "start_local": month.start.astimezone(zone).strftime("%Y-%m-%d %H:%M"),
        "end_local": month.end.astimezone(zone).strftime("%Y-%m-%d %H:%M"),
    }


def parse_user(raw: str) -> int | None:
    try:
        return id_text(raw)
    except ParseError:
        return None
