"""Time on the wire: RFC 3339 UTC with milliseconds, from and to epoch milliseconds."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from functools import lru_cache

# RFC 3339 section 5.6 date-time (a space may stand for "T", as its note allows); ASCII digits only.
_RFC3339 = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt ][0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]+)?([Zz]|[+-][0-9]{2}:[0-9]{2})", re.ASCII
)

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MS = timedelta(milliseconds=1)


def ms_to_datetime(ms: int) -> datetime:
    return EPOCH + ms * _MS


@lru_cache(maxsize=4096)
def _second(seconds: int) -> str:
    return (EPOCH + timedelta(seconds=seconds)).isoformat(timespec="seconds")[:-6]  # always four-digit years


def format_ms(ms: int) -> str:
    """Epoch ms to "2026-11-26T04:16:01.123Z"; the seconds part is cached (a batch shares a few seconds)."""
    seconds, millis = divmod(ms, 1000)
    return f"{_second(seconds)}.{millis:03d}Z"


def datetime_to_ms(moment: datetime) -> int:
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return (moment - EPOCH) // _MS  # floor, also before 1970


def parse_rfc3339(text: str) -> datetime:
    """Parse an RFC 3339 timestamp with an explicit offset ("Z" or ±hh:mm); raise ValueError otherwise."""
    if _RFC3339.fullmatch(text) is None:
        raise ValueError("must be an RFC 3339 timestamp with an offset, like 2026-11-26T04:16:01.123Z")
    normalized = text[:-1] + "+00:00" if text[-1] in "Zz" else text
    try:
        return datetime.fromisoformat(normalized).astimezone(UTC)
    except OverflowError:
        raise ValueError("is out of the supported range of years") from None
