"""Reservations expire (docs/api.md): every sentence of the contract over real HTTP, on fakeredis and a real Redis.

Time is the test's: a partition's clock never goes back (lua/_prelude.lua clock()), so raising its stored clock
makes the scripts, the sweeper's due reads and the reservation reads see exactly that time. Each test stops the
background sweeper first and sweeps when it means to (the last test lets it run).
"""

from __future__ import annotations

import asyncio
from decimal import Decimal
from typing import Any

import pytest

from billing.bootstrap import Context
from billing.core.config import default
from billing.core.errors import ApiError
from billing.core.parsing import timestamp
from billing.core.timefmt import datetime_to_ms, format_ms
from billing.ledger.expiry import ReservationSweeper
from tests.support.api import Api, problem

ORDERS = {"token": "tok-orders"}
REF = {"user_id": 1, "service_id": 7, "order_id": 42}
DEFAULT_TTL: int = default("reservation_ttl_seconds")


def parse_timestamp_ms(text: str) -> int:
    return datetime_to_ms(timestamp(text))


@pytest.fixture
async def still(ctx: Context) -> Context:
    """The context with its background sweeper stopped: nothing expires but what the test sweeps or calls."""
    assert ctx.reservation_sweeper is not None
    await ctx.reservation_sweeper.stop()
    return ctx


async def at(ctx: Context, ms: int, user_id: int = 1) -> None:
    """The user's partition's clock is `ms` from now on (it never goes back)."""
    await ctx.redis.hset(ctx.ledger.keys.meta(ctx.ledger.keys.partition_of(user_id)), "clock", ms)


async def reserve(api: Api, amount: str = "30.00", ref: dict[str, int] = REF, **fields: Any) -> dict[str, Any]:
    r = await api.post("/v1/reservations", {**ref, "amount": amount, **fields}, **ORDERS)
    assert r.status == 201, r.body
    body: dict[str, Any] = r.json
    return body


async def balance(api: Api, user_id: int = 1) -> dict[str, Any]:
    body: dict[str, Any] = (await api.balance(user_id)).json
    return body


async def read(api: Api, ref: dict[str, int] = REF) -> Any:
    query = "&".join(f"{k}={v}" for k, v in ref.items())
    return await api.get(f"/v1/reservations?{query}", **ORDERS)


async def history(api: Api, ctx: Context, lang: str = "ru", user_id: int = 1) -> list[dict[str, Any]]:
    await ctx.projector.drain()
    r = await api.get(f"/v1/users/{user_id}/transactions", token="tok-support", headers={"Accept-Language": lang})
    assert r.status == 200, r.body
    items: list[dict[str, Any]] = r.json["items"]
    return items


async def test_expires_at_is_created_at_plus_expires_in_or_the_default(api: Api, still: Context) -> None:
    await api.deposit(1, "100.00")
    shown = (await reserve(api, "10.00"))["reservation"]
    assert shown["status"] == "reserved" and (await read(api)).json == shown
    assert parse_timestamp_ms(shown["expires_at"]) - parse_timestamp_ms(shown["created_at"]) == DEFAULT_TTL * 1000
    for order, expires_in, seconds in [(43, 10, 10), (44, Decimal("10.0"), 10), (45, None, DEFAULT_TTL)]:
        spelled = {"expires_in": float(expires_in)} if isinstance(expires_in, Decimal) else {"expires_in": expires_in}
        shown = (await reserve(api, "1.00", {**REF, "order_id": order}, **spelled))["reservation"]
        assert parse_timestamp_ms(shown["expires_at"]) - parse_timestamp_ms(shown["created_at"]) == seconds * 1000
    shown = (await reserve(api, "1.00", {**REF, "order_id": 46}, expires_in=31_536_000))["reservation"]
    assert parse_timestamp_ms(shown["expires_at"]) - parse_timestamp_ms(shown["created_at"]) == 31_536_000_000


@pytest.mark.parametrize("body", [b"0", b"31536001", b'"10"', b"10.5", b"true", b"-1", b"1e999", b"[]"])
async def test_an_expires_in_that_is_not_an_integer_of_1_to_31536000_is_refused(
    api: Api, still: Context, body: bytes
) -> None:
    await api.deposit(1, "100.00")
    raw = b'{"user_id": 1, "service_id": 7, "order_id": 42, "amount": "30.00", "expires_in": ' + body + b"}"
    r = await api.request("POST", "/v1/reservations", body=raw, **ORDERS)
    problem(r, 400, "validation_error")
    assert r.json["errors"][0]["field"] == "expires_in"
    assert await balance(api) == {"user_id": 1, "available": "100.00", "reserved": "0.00"}
    problem(await read(api), 404, "reservation_not_found")


async def test_the_batch_reserve_takes_expires_in(api: Api, still: Context) -> None:
    await api.deposit(1, "100.00")
    ops = [
        {"op": "reserve", **REF, "amount": "5.00", "expires_in": 60},
        {"op": "reserve", **REF, "order_id": 43, "amount": "5.00", "expires_in": 0},
    ]
    r = await api.post("/v1/batch", {"operations": ops}, **ORDERS)
    first, second = r.json["results"]
    assert first["status"] == 201
    shown = first["body"]["reservation"]
    assert parse_timestamp_ms(shown["expires_at"]) - parse_timestamp_ms(shown["created_at"]) == 60_000
    assert second["status"] == 400 and second["body"]["code"] == "validation_error"


async def test_at_its_deadline_the_sweeper_releases_it_as_an_expired_release(api: Api, still: Context) -> None:
    await api.deposit(1, "100.00")
    await api.put("/v1/services/7", {"name": "Продвижение"}, **ORDERS)
    shown = (await reserve(api, expires_in=30))["reservation"]
    deadline = parse_timestamp_ms(shown["expires_at"])
    sweeper = ReservationSweeper(still.ledger)
    await at(still, deadline - 1)
    assert await sweeper.run_once() == 0  # a millisecond early: still reserved
    assert (await read(api)).json["status"] == "reserved"
    await at(still, deadline)
    assert await sweeper.run_once() == 1
    assert await sweeper.run_once() == 0  # released once
    assert await balance(api) == {"user_id": 1, "available": "100.00", "reserved": "0.00"}
    after = (await read(api)).json
    assert after["status"] == "expired" and after["updated_at"] == shown["expires_at"]
    assert after["recognized_amount"] is None
    release = (await history(api, still))[0]
    assert release["type"] == "release" and release["amount"] == "30.00" and release["reason"] == "expired"
    assert release["created_at"] == shown["expires_at"]  # the sweep ran at the deadline (the clock's time)
    assert release["description"] == "Возврат 30.00 ₽ из резерва: истёк срок резерва, услуга «Продвижение», заказ 42"
    english = (await history(api, still, "en"))[0]["description"]
    assert english == "30.00 RUB returned from a reservation that expired: service “Продвижение”, order 42"
    # a release by cancel says nothing of expiry
    await reserve(api, "1.00", {**REF, "order_id": 43})
    await api.post("/v1/reservations/cancel", {**REF, "order_id": 43}, **ORDERS)
    cancelled = (await history(api, still))[0]
    assert "reason" not in cancelled and "истёк" not in cancelled["description"]


@pytest.mark.parametrize("call", ["recognize", "cancel"])
async def test_a_recognize_or_cancel_at_the_deadline_releases_it_and_is_refused(
    api: Api, still: Context, call: str
) -> None:
    await api.deposit(1, "100.00")
    shown = (await reserve(api, expires_in=5))["reservation"]
    await at(still, parse_timestamp_ms(shown["expires_at"]))
    assert (await balance(api))["reserved"] == "30.00"  # a balance may show it reserved until its release
    assert (await read(api)).json["status"] == "expired"  # a reservation read never does
    body = {**REF, "amount": "30.00"} if call == "recognize" else REF
    r = await api.post(f"/v1/reservations/{call}", body, key=f"{call}-1", **ORDERS)
    problem(r, 409, "reservation_expired")
    assert await balance(api) == {"user_id": 1, "available": "100.00", "reserved": "0.00"}  # released with it
    items = await history(api, still)
    assert [(i["type"], i.get("reason")) for i in items[:2]] == [("release", "expired"), ("reserve", None)]
    assert await ReservationSweeper(still.ledger).run_once() == 0  # nothing left for the sweeper
    # again, with its key (replayed) or without: the same refusal, nothing more moves
    replay = await api.post(f"/v1/reservations/{call}", body, key=f"{call}-1", **ORDERS)
    problem(replay, 409, "reservation_expired")
    assert replay.headers.get("Idempotent-Replayed") == "true"
    for other in ("recognize", "cancel"):
        again = {**REF, "amount": "1.00"} if other == "recognize" else REF
        problem(await api.post(f"/v1/reservations/{other}", again, **ORDERS), 409, "reservation_expired")
    assert len(await history(api, still)) == len(items)


async def test_recognize_and_cancel_before_the_deadline_work_as_before(api: Api, still: Context) -> None:
    await api.deposit(1, "100.00")
    shown = (await reserve(api, expires_in=5))["reservation"]
    await at(still, parse_timestamp_ms(shown["expires_at"]) - 1)
    r = await api.post("/v1/reservations/recognize", {**REF, "amount": "20.00"}, **ORDERS)
    assert r.status == 200 and r.json["reservation"]["status"] == "recognized"
    assert r.json["reservation"]["expires_at"] == shown["expires_at"]
    await at(still, parse_timestamp_ms(shown["expires_at"]) + 1000)
    assert (await read(api)).json["status"] == "recognized"  # closed reservations never expire
    again = await api.post("/v1/reservations/recognize", {**REF, "amount": "20.00"}, **ORDERS)
    assert again.status == 200 and again.json["reservation"]["status"] == "recognized"
    assert await ReservationSweeper(still.ledger).run_once() == 0


async def test_reserving_again_compares_only_the_amount(api: Api, still: Context) -> None:
    await api.deposit(1, "100.00")
    shown = (await reserve(api, expires_in=5))["reservation"]
    same = await api.post("/v1/reservations", {**REF, "amount": "30.00", "expires_in": 999}, **ORDERS)
    assert same.status == 200 and same.json["reservation"] == shown
    await at(still, parse_timestamp_ms(shown["expires_at"]))
    # past the deadline, not yet swept: the reserve releases it, and answers it expired
    again = await api.post("/v1/reservations", {**REF, "amount": "30.00", "expires_in": 60}, **ORDERS)
    assert again.status == 200
    assert again.json["reservation"]["status"] == "expired"
    assert again.json["reservation"]["expires_at"] == shown["expires_at"]
    assert again.json["balance"] == {"user_id": 1, "available": "100.00", "reserved": "0.00"}
    problem(await api.post("/v1/reservations", {**REF, "amount": "30.01"}, **ORDERS), 409, "reservation_conflict")
    items = await history(api, still)
    assert [i["type"] for i in items] == ["release", "reserve", "deposit"]  # released once
    # a conflicting reserve past the deadline releases it too
    other = {**REF, "order_id": 43}
    shown = (await reserve(api, "5.00", other, expires_in=1))["reservation"]
    await at(still, parse_timestamp_ms(shown["expires_at"]))
    problem(await api.post("/v1/reservations", {**other, "amount": "6.00"}, **ORDERS), 409, "reservation_conflict")
    assert (await balance(api))["reserved"] == "0.00"


async def test_closed_records_expire_and_open_ones_do_not(api: Api, still: Context) -> None:
    await api.deposit(1, "100.00")
    keys = still.ledger.keys
    for order in (1, 2, 3, 4):
        await reserve(api, "1.00", {**REF, "order_id": order}, expires_in=60 if order == 4 else 10)
    await api.post("/v1/reservations/recognize", {**REF, "order_id": 1, "amount": "1.00"}, **ORDERS)
    await api.post("/v1/reservations/cancel", {**REF, "order_id": 2}, **ORDERS)
    await at(still, parse_timestamp_ms((await read(api, {**REF, "order_id": 3})).json["expires_at"]))
    await ReservationSweeper(still.ledger).run_once()
    ttl = [await still.redis.ttl(keys.reservation(1, 7, order)) for order in (1, 2, 3)]
    recognized_ttl: int = default("reservation_recognized_ttl_seconds")
    closed_ttl: int = default("reservation_closed_ttl_seconds")
    assert recognized_ttl - 5 < ttl[0] <= recognized_ttl
    assert closed_ttl - 5 < ttl[1] <= closed_ttl and closed_ttl - 5 < ttl[2] <= closed_ttl
    assert recognized_ttl > closed_ttl  # refunds need recognized ones longer
    assert await still.redis.ttl(keys.reservation(1, 7, 4)) == -1  # still open: no TTL
    index = await still.redis.zrange(keys.expiry(keys.partition_of(1)), 0, -1)
    assert index == [b"1:7:4"]  # the closed ones left the index when they closed


async def test_a_closed_record_that_expired_lets_the_order_be_reserved_again(api: Api, still: Context) -> None:
    await api.deposit(1, "100.00")
    await reserve(api, "1.00")
    await api.post("/v1/reservations/cancel", REF, **ORDERS)
    await still.redis.delete(still.ledger.keys.reservation(1, 7, 42))  # what its TTL does, later
    fresh = await api.post("/v1/reservations", {**REF, "amount": "2.00"}, **ORDERS)
    assert fresh.status == 201 and fresh.json["reservation"]["status"] == "reserved"


async def test_the_running_sweeper_releases_a_reservation_without_any_call(api: Api, ctx: Context) -> None:
    """Every worker sweeps (BILLING_RESERVATION_SWEEP_INTERVAL_MS, 250 by default): nobody has to call."""
    await api.deposit(1, "100.00")
    shown = (await reserve(api, expires_in=5))["reservation"]
    await at(ctx, parse_timestamp_ms(shown["expires_at"]))
    for _ in range(200):  # bounded: the sweeper runs about every 0.25 s
        if (await balance(api))["reserved"] == "0.00":
            break
        await asyncio.sleep(0.05)
    assert await balance(api) == {"user_id": 1, "available": "100.00", "reserved": "0.00"}
    assert ctx.reservation_sweeper is not None and ctx.reservation_sweeper.released == 1
    release = (await history(api, ctx))[0]
    assert release["reason"] == "expired" and release["created_at"] == format_ms(
        parse_timestamp_ms(shown["expires_at"])
    )


async def test_the_sweeper_waits_while_money_writes_are_refused(api: Api, still: Context) -> None:
    """A ledger behind MongoDB refuses money writes (billing/projection/seq_guard.py); releases are money writes."""
    await api.deposit(1, "100.00")
    shown = (await reserve(api, expires_in=5))["reservation"]
    await at(still, parse_timestamp_ms(shown["expires_at"]))
    sweeper = ReservationSweeper(still.ledger)

    def refused() -> None:
        raise ApiError("unavailable", "the ledger is behind MongoDB")

    sweeper.write_gate = refused
    assert await sweeper.run_once() == 0
    assert (await balance(api))["reserved"] == "30.00"
    sweeper.write_gate = still.sequence_guard.ensure_writable
    assert await sweeper.run_once() == 1
