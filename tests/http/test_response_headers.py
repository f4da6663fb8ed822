"""Headers every API answer carries, errors included: a current Date, Server, no-store, the request id."""

from __future__ import annotations

import email.utils
import time

from tests.support.api import Api


def _date_age_seconds(value: str | None) -> float:
    assert value, "no Date header"
    parsed = email.utils.parsedate_to_datetime(value)
    assert value.endswith(" GMT")
    return abs(time.time() - parsed.timestamp())


async def test_answers_carry_a_current_date_and_the_usual_headers(api: Api) -> None:
    ok = await api.deposit(41, "1.00")
    refused = await api.post("/v1/withdrawals", {"user_id": 41, "amount": "5.00"}, token="tok-payments")
    missing = await api.get("/v1/no-such-route", token=None)
    assert (ok.status, refused.status, missing.status) == (201, 409, 404)
    for r in (ok, refused, missing):
        assert _date_age_seconds(r.headers.get("Date")) < 3
        assert r.headers.get("Server", "").startswith("TornadoServer/")
        assert r.headers.get("Cache-Control") == "no-store"
        assert r.headers.get("X-Request-ID")


async def test_the_date_moves_on_with_the_clock(api: Api) -> None:
    first = (await api.get("/healthz", token=None)).headers.get("Date")
    time.sleep(1.1)  # the cached value is per second: the next answer must not reuse this one
    second = (await api.get("/healthz", token=None)).headers.get("Date")
    assert first != second and _date_age_seconds(second) < 3
