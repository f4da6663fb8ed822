"""Report months: validation and the UTC range of a month in the report's time zone."""

from __future__ import annotations

import re
from datetime import UTC, datetime

import pytest

from billing.api.routes import MONTH
from billing.core.errors import ApiError
from billing.core.timefmt import load_zone
from billing.views.report_month import parse_month

MOSCOW = load_zone("Europe/Moscow")


@pytest.mark.parametrize(
    "text",
    [
        None,
        "",
        "2026-1",
        "2026-13",
        "2026-00",
        "1969-12",
        "3000-01",
        "26-11",
        "2026-11-01",
        "2026/11",
        "２０２６-11",
        "2026-11\n",
        " 2026-11",
        "2026-1a",
        "+2026-11",
    ],
)
def test_bad_months_are_validation_errors(text: str | None) -> None:
    with pytest.raises(ApiError) as caught:
        parse_month(text, MOSCOW)
    assert caught.value.code == "validation_error"
    assert caught.value.errors[0]["field"] == "month"


def test_moscow_month_is_shifted_three_hours() -> None:
    month = parse_month("2026-11", MOSCOW)
    assert month.label == "2026-11"
    assert month.start == datetime(2026, 10, 31, 21, 0, tzinfo=UTC)
    assert month.end == datetime(2026, 11, 30, 21, 0, tzinfo=UTC)


def test_december_ends_in_the_next_year() -> None:
    month = parse_month("2999-12", load_zone("UTC"))
    assert (month.start, month.end) == (datetime(2999, 12, 1, tzinfo=UTC), datetime(3000, 1, 1, tzinfo=UTC))
    assert parse_month("1970-01", load_zone("UTC")).start == datetime(1970, 1, 1, tzinfo=UTC)


def test_daylight_saving_zone_uses_each_boundary_own_offset() -> None:
    berlin = load_zone("Europe/Berlin")
    april = parse_month("2026-04", berlin)
    assert april.start == datetime(2026, 3, 31, 22, 0, tzinfo=UTC)  # CEST, +02:00
    march = parse_month("2026-03", berlin)
    assert march.start == datetime(2026, 2, 28, 23, 0, tzinfo=UTC)  # CET, +01:00
    assert march.end == april.start


def test_unknown_zone_is_refused_at_start() -> None:
    with pytest.raises(ValueError, match="BILLING_REPORT_TZ"):
        load_zone("Mars/Olympus")
    with pytest.raises(ValueError):
        load_zone("../etc/passwd")


def test_published_month_pattern_admits_exactly_the_accepted_months() -> None:
    pattern = re.compile(MONTH["pattern"])
    for text in ["1970-01", "1999-12", "2026-11", "2999-12", "1969-12", "3000-01", "0000-01", "2026-00", "2026-13"]:
        accepted = True
        try:
            parse_month(text, MOSCOW)
        except ApiError:
            accepted = False
        assert bool(pattern.fullmatch(text)) == accepted, text
