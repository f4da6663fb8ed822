"""The console's user page state: query string round trips, the page stack, sort toggles, API query."""

from __future__ import annotations

from datetime import date
from urllib.parse import parse_qs, urlsplit
from zoneinfo import ZoneInfo

import pytest

from billing.api.auth import Authenticator
from billing.console.history_view import BadState, HistoryState
from billing.console.session import resolve, session_value
from billing.ledger.scripts import RedisKeys, glob_escape

UTC_ZONE = ZoneInfo("UTC")


def parse(url: str) -> HistoryState:
    parts = urlsplit(url)
    assert parts.path == "/console/users"
    return HistoryState.from_query(parse_qs(parts.query, keep_blank_values=True))


def test_url_round_trip_keeps_every_filter() -> None:
    state = HistoryState(
        user_id=7,
        sort="amount",
        order="asc",
        types=("deposit", "charge"),
        date_from=date(2026, 11, 1),
        date_to=date(2026, 11, 30),
        cursor="c3",
        back=("c2",),
        lang="en",
    )
    assert parse(state.url()) == state
    assert "token" not in state.url()


def test_page_stack_walks_forward_and_back() -> None:
    first = HistoryState(user_id=1)
    second = first.next_page("c2")
    third = second.next_page("c3")
    assert (first.page_number, second.page_number, third.page_number) == (1, 2, 3)
    assert third.back == ("c2",) and third.cursor == "c3"
    assert third.previous_page() == second
    assert second.previous_page() == first
    assert first.previous_page() is None


def test_sorting_flips_the_current_column_and_restarts_paging() -> None:
    state = HistoryState(user_id=1).next_page("c2")
    by_date = state.sorted_by("created_at")
    assert (by_date.sort, by_date.order, by_date.cursor) == ("created_at", "asc", "")
    by_amount = by_date.sorted_by("amount")
    assert (by_amount.sort, by_amount.order) == ("amount", "desc")
    assert by_amount.sorted_by("amount").order == "asc"


def test_api_query_turns_inclusive_dates_into_rfc3339_bounds() -> None:
    state = HistoryState(user_id=1, types=("reserve",), date_from=date(2026, 11, 1), date_to=date(2026, 11, 30))
    assert state.api_query(UTC_ZONE) == {
        "sort": "created_at",
        "order": "desc",
        "limit": "20",
        "type": "reserve",
        "from": "2026-11-01T00:00:00.000Z",
        "to": "2026-12-01T00:00:00.000Z",
    }
    assert "cursor" not in state.api_query(UTC_ZONE)
    assert state.next_page("abc").api_query(UTC_ZONE)["cursor"] == "abc"


def test_the_dates_are_days_in_the_report_zone() -> None:
    """Moscow is UTC+3: its 1 November starts at 21:00 UTC on 31 October; a day across a DST change
    (Berlin, 27 October 2024: 25 hours) ends at the next local midnight."""
    moscow = HistoryState(user_id=1, date_from=date(2026, 11, 1), date_to=date(2026, 11, 30))
    query = moscow.api_query(ZoneInfo("Europe/Moscow"))
    assert (query["from"], query["to"]) == ("2026-10-31T21:00:00.000Z", "2026-11-30T21:00:00.000Z")
    berlin = HistoryState(user_id=1, date_from=date(2024, 10, 27), date_to=date(2024, 10, 27))
    query = berlin.api_query(ZoneInfo("Europe/Berlin"))
    assert (query["from"], query["to"]) == ("2024-10-26T22:00:00.000Z", "2024-10-27T23:00:00.000Z")


@pytest.mark.parametrize(
    ("query", "key"),
    [
        ({"user": ["0"]}, "bad_user_id"),
        ({"user": ["9223372036854775808"]}, "bad_user_id"),
        ({"user": ["-1"]}, "bad_user_id"),
        ({"user": ["1"], "sort": ["id"]}, "bad_sort"),
        ({"user": ["1"], "from": ["2026-13-01"]}, "bad_dates"),
        ({"user": ["1"], "from": ["2026-11-02"], "to": ["2026-11-01"]}, "bad_dates"),
    ],
)
def test_bad_state_names_its_message(query: dict, key: str) -> None:
    with pytest.raises(BadState) as caught:
        HistoryState.from_query(query)
    assert caught.value.key == key


def test_unknown_types_are_dropped() -> None:
    assert HistoryState.from_query({"user": ["1"], "type": ["charge", "bogus"]}).types == ("charge",)


def test_session_holds_the_digest_and_resolves_current_roles() -> None:
    auth = Authenticator({"secret-token": ["support"]})
    value, principal = session_value("secret-token", auth)
    assert "secret-token" not in value and len(value) == 64
    assert resolve(value.encode(), auth) == principal
    assert resolve(value.encode(), Authenticator({"other": ["admin"]})) is None
    assert resolve(b"zz", auth) is None and resolve(b"", auth) is None
    assert session_value("wrong", auth) is None


def test_reservation_scan_pattern_escapes_the_prefix() -> None:
    assert glob_escape("a*b?[c]\\") == "a\\*b\\?\\[c\\]\\\\"
    assert RedisKeys("p[1]:").user_reservation_pattern(5) == "p\\[1\\]:{p6}:resv:5:*"  # user 5: partition 6 of 16
