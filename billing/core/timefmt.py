"""Time on the wire: RFC 3339 UTC with milliseconds, from and to epoch milliseconds."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from functools import lru_cache
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MS = timedelta(milliseconds=1)


def ms_to_datetime(ms: int) -> datetime:
    return EPOCH + ms * _MS


@lru_cache(maxsize=4096)
def _second(seconds: int) -> str:
    return (EPOCH + timedelta(seconds=seconds)).isoformat(timespec="seconds")[:-6]  # always four-digit years


@lru_cache(maxsize=1024)
def format_ms(ms: int) -> str:
    """Epoch ms to "2026-11-26T04:16:01.123Z". Cached: the transactions of one script run share its time, so a
    batch's answers and the projector's hash-chain links format a few times many times each."""
    seconds, millis = divmod(ms, 1000)
    return f"{_second(seconds)}.{millis:03d}Z"


def datetime_to_ms(moment: datetime) -> int:
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return (moment - EPOCH) // _MS  # floor, also before 1970


def load_zone(name: str) -> ZoneInfo:
    """The IANA zone for BILLING_REPORT_TZ; a bad name fails loudly at start, not on the first report."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ValueError(f"BILLING_REPORT_TZ={name!r} is not an IANA time zone name") from exc
