"""Report months: "YYYY-MM" validated and turned into a UTC range in the report's time zone."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

from billing.core.parsing import ParseError, field_error
from billing.core.parsing import month as parse_month_text

# The published form of parsing.month's rule (OpenAPI): 1970-01 … 2999-12.
MONTH_PATTERN = r"^(19[7-9][0-9]|2[0-9]{3})-(0[1-9]|1[0-2])$"


@dataclass(frozen=True)
class Month:
    """One calendar month in a time zone: its label and the UTC instants [start, end) it covers."""

    label: str
    start: datetime
    end: datetime


def parse_month(text: str | None, zone: ZoneInfo) -> Month:
    """Parse "YYYY-MM" exactly (1970-01 … 2999-12); anything else is a 400 validation_error."""
    try:
        year, month = parse_month_text(text if isinstance(text, str) else "")
    except ParseError as exc:
        raise field_error("month", exc) from None
    next_year, next_month = (year + 1, 1) if month == 12 else (year, month + 1)
    start = datetime(year, month, 1, tzinfo=zone).astimezone(UTC)
    end = datetime(next_year, next_month, 1, tzinfo=zone).astimezone(UTC)
    return Month(label=f"{year:04d}-{month:02d}", start=start, end=end)
