"""Time on the wire: RFC 3339 UTC with milliseconds, from and to epoch milliseconds."""

from __future__ import annotations

from datetime import UTC, datetime
from functools import lru_cache


def ms_to_datetime(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, tz=UTC).replace(microsecond=(ms % 1000) * 1000)


@lru_cache(maxsize=4096)
def _second(seconds: int) -> str:
    return datetime.fromtimestamp(seconds, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S")


def format_ms(ms: int) -> str:
    """Epoch ms to "2026-11-26T04:16:01.123Z"; the seconds part is cached (a batch shares a few seconds)."""
    seconds, millis = divmod(ms, 1000)
    return f"{_second(seconds)}.{millis:03d}Z"


def datetime_to_ms(moment: datetime) -> int:
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp()) * 1000 + moment.microsecond // 1000


def parse_rfc3339(text: str) -> datetime:
    """Parse an RFC 3339 timestamp with an explicit offset ("Z" or ±hh:mm); raise ValueError otherwise."""
    if len(text) < 20 or text[10] not in "Tt ":
        raise ValueError("must be an RFC 3339 timestamp like 2026-11-26T04:16:01.123Z")
    normalized = text[:-1] + "+00:00" if text[-1] in "Zz" else text
    moment = datetime.fromisoformat(normalized)
    if moment.tzinfo is None:
        raise ValueError("must carry a time zone offset (Z or +hh:mm)")
    return moment.astimezone(UTC)
