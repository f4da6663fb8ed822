"""History query parsing, the keyset find() specs and the signed cursor, without any store."""

from __future__ import annotations

import base64

import orjson
import pytest

from billing.core.errors import ApiError
from billing.core.timefmt import ms_to_datetime
from billing.views.cursor import CursorCodec
from billing.views.history import HistoryQuery, find_specs, parse_history_query


def fields_of(exc: pytest.ExceptionInfo[ApiError]) -> list[str]:
    return [error["field"] for error in exc.value.errors]


def test_defaults() -> None:
    q = parse_history_query(7, {})
    assert (q.sort, q.order, q.limit, q.types, q.start_ms, q.end_ms, q.cursor) == (
        "created_at",
        "desc",
        20,
        (),
        None,
        None,
        None,
    )


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ({"limit": "0"}, "limit"),
        ({"limit": "101"}, "limit"),
        ({"limit": "-1"}, "limit"),
        ({"limit": "1.5"}, "limit"),
        ({"limit": ""}, "limit"),
        ({"limit": "١٠"}, "limit"),  # Arabic-Indic digits are digits to str.isdigit, not to us
        ({"sort": "id"}, "sort"),
        ({"order": "descending"}, "order"),
        ({"type": "refunds"}, "type"),
        ({"type": "deposit,"}, "type"),
        ({"type": ""}, "type"),
        ({"type": "Deposit"}, "type"),
        ({"from": "yesterday"}, "from"),
        ({"from": "2026-11-26T04:16:01"}, "from"),  # no offset
        ({"to": "2026-11-26T04:16:01,5Z"}, "to"),  # comma fraction is ISO 8601, not RFC 3339
        ({"to": "2026-02-30T00:00:00Z"}, "to"),
        ({"from": "2026-11-27T00:00:00Z", "to": "2026-11-26T00:00:00Z"}, "to"),
        ({"page": "2"}, "page"),
    ],
)
def test_bad_parameters_are_validation_errors(query: dict[str, str], field: str) -> None:
    with pytest.raises(ApiError) as exc:
        parse_history_query(1, query)
    assert exc.value.code == "validation_error" and exc.value.status == 400
    assert fields_of(exc) == [field]


def test_every_problem_is_reported_at_once() -> None:
    with pytest.raises(ApiError) as exc:
        parse_history_query(1, {"sort": "x", "order": "y", "limit": "0", "type": "z", "from": "a", "to": "b", "q": ""})
    assert fields_of(exc) == ["q", "sort", "order", "limit", "type", "from", "to"]


def test_types_are_canonical_and_times_round_up_to_whole_milliseconds() -> None:
    q = parse_history_query(
        1,
        {
            "type": "charge,refund,deposit,charge",
            "from": "2026-11-26T07:16:01.1234+03:00",
            "to": "2026-11-26T04:16:02Z",
            "limit": "100",
        },
    )
    assert q.types == ("deposit", "charge", "refund") and q.limit == 100
    assert ms_to_datetime(q.start_ms).isoformat() == "2026-11-26T04:16:01.124000+00:00"
    assert ms_to_datetime(q.end_ms).isoformat() == "2026-11-26T04:16:02+00:00"
    same = parse_history_query(1, {"type": "refund,deposit,charge", "from": "2026-11-26T04:16:01.124Z", "to": q_to(q)})
    assert same.fingerprint() == q.fingerprint()


def q_to(q: HistoryQuery) -> str:
    return ms_to_datetime(q.end_ms).isoformat().replace("+00:00", "Z")


def test_equal_from_and_to_is_an_empty_window_not_an_error() -> None:
    q = parse_history_query(1, {"from": "2026-11-26T00:00:00Z", "to": "2026-11-26T00:00:00Z"})
    assert q.start_ms == q.end_ms


def test_fingerprint_binds_user_sort_order_and_filters_but_not_limit() -> None:
    base = HistoryQuery(1)
    assert HistoryQuery(1, limit=5).fingerprint() == base.fingerprint()
    others = [
        HistoryQuery(2),
        HistoryQuery(1, sort="amount"),
        HistoryQuery(1, order="asc"),
        HistoryQuery(1, types=("deposit",)),
        HistoryQuery(1, start_ms=0),
        HistoryQuery(1, end_ms=0),
    ]
    assert len({q.fingerprint() for q in others} | {base.fingerprint()}) == len(others) + 1


def test_find_specs_first_page_and_after_a_cursor() -> None:
    q = HistoryQuery(5, types=("deposit", "charge"), start_ms=1000, end_ms=9000)
    [(first, sort)] = find_specs(q, None)
    assert sort == [("created_at", -1), ("_id", -1)]
    assert first == {
        "user_id": 5,
        "type": {"$in": ["deposit", "charge"]},
        "created_at": {"$gte": ms_to_datetime(1000), "$lt": ms_to_datetime(9000)},
    }
    ties, rest = find_specs(q, (4000, 77))
    assert ties[0]["created_at"] == ms_to_datetime(4000) and ties[0]["_id"] == {"$lt": 77}
    assert rest[0]["created_at"] == {"$gte": ms_to_datetime(1000), "$lt": ms_to_datetime(4000)}
    asc = HistoryQuery(5, sort="amount", order="asc", types=("charge",))
    ties, rest = find_specs(asc, (250, 9))
    assert ties == ({"user_id": 5, "type": "charge", "amount": 250, "_id": {"$gt": 9}}, [("amount", 1), ("_id", 1)])
    assert rest[0] == {"user_id": 5, "type": "charge", "amount": {"$gt": 250}}


def test_find_specs_stop_at_the_projection_watermark() -> None:
    desc = HistoryQuery(5)
    [(first, _sort)] = find_specs(desc, None, upto=40)
    assert first == {"user_id": 5, "_id": {"$lte": 40}}
    ties, rest = find_specs(desc, (4000, 30), upto=40)
    assert ties[0]["_id"] == {"$lt": 30, "$lte": 40} and rest[0]["_id"] == {"$lte": 40}
    ties, rest = find_specs(HistoryQuery(5, sort="amount", order="asc"), (250, 9), upto=40)
    assert ties[0]["_id"] == {"$gt": 9, "$lte": 40} and rest[0]["_id"] == {"$lte": 40}


# ---- the cursor ---------------------------------------------------------------------------------


def invalid(codec: CursorCodec, token: str, fingerprint: str = "fp") -> str:
    with pytest.raises(ApiError) as exc:
        codec.decode(token, fingerprint)
    assert exc.value.code == "invalid_cursor" and exc.value.status == 400
    return exc.value.detail


def test_cursor_round_trip() -> None:
    codec = CursorCodec("s3cret")
    token = codec.encode("fp", -5, 2**63 - 1)
    assert codec.decode(token, "fp") == (-5, 2**63 - 1)
    assert token.isascii() and "=" not in token and "/" not in token and "+" not in token


def test_cursor_is_refused_when_tampered_forged_or_foreign() -> None:
    codec = CursorCodec("s3cret")
    token = codec.encode("fp", 1000, 42)
    payload, signature = token.split(".")
    # Change the payload (the id it resumes after) but keep the signature: refused.
    data = orjson.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    data["k"][1] = 41
    edited = base64.urlsafe_b64encode(orjson.dumps(data)).rstrip(b"=").decode()
    assert "altered" in invalid(codec, f"{edited}.{signature}")
    # Flip one character of the signature.
    flipped = signature[:-1] + ("A" if signature[-1] != "A" else "B")
    invalid(codec, f"{payload}.{flipped}")
    # Made with another secret (another deployment, or a forger without the secret).
    invalid(codec, CursorCodec("other").encode("fp", 1000, 42))
    # Made for another query.
    assert "another" in invalid(codec, token, fingerprint="other-fp")
    # Garbage of every shape.
    for garbage in ["", ".", "abc", "a.b.c", f"{payload}.", f".{signature}", "é.é", "x" * 600, token + "=="]:
        invalid(codec, garbage)


def test_signed_but_malformed_payloads_are_refused() -> None:
    codec = CursorCodec("s3cret")

    def signed(payload: bytes) -> str:
        b64 = base64.urlsafe_b64encode(payload).rstrip(b"=").decode()
        return f"{b64}.{base64.urlsafe_b64encode(codec._sign(payload)).rstrip(b'=').decode()}"

    for payload in [
        b"not json",
        b"[]",
        b'{"v": 1, "q": "fp"}',
        b'{"v": 2, "q": "fp", "k": [1, 2]}',
        b'{"v": 1, "q": "fp", "k": [1.5, 2]}',
        b'{"v": 1, "q": "fp", "k": [true, 2]}',
        b'{"v": 1, "q": "fp", "k": [1, 0]}',
        b'{"v": 1, "q": "fp", "k": [1, 2, 3]}',
        b'{"v": 1, "q": "fp", "k": [1, 9223372036854775808]}',
    ]:
        invalid(codec, signed(payload))
    assert codec.decode(signed(b'{"v": 1, "q": "fp", "k": [1, 2]}'), "fp") == (1, 2)
