"""The event feed, GET /v1/events, end to end: money operations over HTTP -> outbox -> projector -> the feed."""

from __future__ import annotations

import asyncio
import random
from collections import defaultdict
from typing import Any
from urllib.parse import urlencode

import pytest

from billing.bootstrap import Context
from billing.core.config import MAX_PARTITIONS
from billing.views.events import MAX_EVENT_CURSOR_LENGTH, MAX_LIMIT, EventCursor
from tests.support.api import Api, problem
from tests.support.workload import deposit, run

pytestmark = pytest.mark.parametrize("mongo_backend", ["mongomock", "secantus"], indirect=True)
PAY, ORDERS = {"token": "tok-payments"}, {"token": "tok-orders"}


async def feed(api: Api, token: str = "tok-events", headers: dict[str, str] | None = None, **params: str) -> Any:
    query = f"?{urlencode(params)}" if params else ""
    r = await api.get(f"/v1/events{query}", token=token, headers=headers)
    assert r.status == 200, r.body
    return r.json


async def walk(api: Api, after: str | None = None, limit: int = 3) -> tuple[list[dict[str, Any]], str]:
    """Every event from `after` on, following next until a page comes back empty."""
    events: list[dict[str, Any]] = []
    while True:
        params = {"limit": str(limit), **({"after": after} if after else {})}
        page = await feed(api, **params)
        assert len(page["items"]) <= limit
        after = page["next"]
        if not page["items"]:
            return events, after
        events += page["items"]


async def ok(response: Any, status: int = 201) -> dict[str, Any]:
    assert response.status == status, response.body
    return response.json


async def history(api: Api, user_id: int, **params: str) -> list[dict[str, Any]]:
    r = await api.get(f"/v1/users/{user_id}/transactions?{urlencode(params)}", token="tok-support")
    assert r.status == 200, r.body
    return list(r.json["items"])


async def test_every_transaction_is_an_event_carrying_its_history_item(api: Api, ctx: Context) -> None:
    await ok(await api.post("/v1/deposits", {"user_id": 1, "amount": "100.50", "comment": "Top-up"}, **PAY))
    await ok(await api.post("/v1/transfers", {"from_user_id": 1, "to_user_id": 2, "amount": "10"}, **PAY))
    await ok(await api.put("/v1/services/7", {"name": "Продвижение"}, **ORDERS), 200)
    reservation = {"user_id": 1, "service_id": 7, "order_id": 42}
    await ok(await api.post("/v1/reservations", {**reservation, "amount": "30.00"}, **ORDERS))
    await ok(await api.post("/v1/reservations/recognize", {**reservation, "amount": "25.00"}, **ORDERS), 200)
    await ctx.projector.drain()

    page = await feed(api)  # without `after`: from the oldest event
    expected = {uid: await history(api, uid, order="asc") for uid in (1, 2)}
    by_user: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for event in page["items"]:
        assert set(event) == {"id", "type", "created_at", "data"}
        assert event["type"] == "transaction.created"
        assert event["id"] == event["data"]["id"]
        assert event["created_at"] == event["data"]["created_at"]
        data = dict(event["data"])
        by_user[data.pop("user_id")].append(data)
    assert by_user == expected  # the history items, each user's in their order
    assert len(page["items"]) == 6  # deposit, transfer out and in, reserve, charge, release
    assert "«Продвижение»" in next(e["data"]["description"] for e in page["items"] if e["data"]["type"] == "charge")

    english = await feed(api, headers={"Accept-Language": "en"})
    assert english["items"][0]["data"]["description"].startswith("Deposit")

    # Following next from the last page: nothing more, and the same position again.
    rest = await feed(api, after=page["next"])
    assert rest == {"items": [], "next": page["next"]}
    # Events are kept: a walk begun now sees all of them again.
    assert (await walk(api))[0] == page["items"]


async def test_pages_of_a_limit_yield_every_event_once(api: Api, ctx: Context) -> None:
    for n in range(1, 12):
        await deposit(ctx.ledger, n % 4 + 1, n * 100)
    await ctx.projector.drain()
    events, after = await walk(api, limit=2)
    ids = [e["id"] for e in events]
    assert len(ids) == 11 and len(set(ids)) == 11
    assert [e["id"] for e in (await feed(api, limit="100"))["items"]] == ids
    for n in range(12, 15):
        await deposit(ctx.ledger, 1, n * 100)
    await ctx.projector.drain()
    more, _ = await walk(api, after, limit=2)
    assert [e["data"]["amount"] for e in more] == ["12.00", "13.00", "14.00"]


async def test_exactly_once_under_concurrent_writers_and_a_projector_restart(api: Api, ctx: Context) -> None:
    stop = asyncio.Event()
    seen: list[dict[str, Any]] = []

    async def writer(seed: int) -> None:
        rng = random.Random(seed)
        for _ in range(10):
            uid = rng.randint(1, 12)
            if rng.random() < 0.7:
                call = ctx.ledger.deposit_call(uid, rng.randint(1, 5000), None)
            else:
                call = ctx.ledger.transfer_call(uid, rng.randint(13, 20), rng.randint(1, 100), "gift")
            await run(ctx.ledger, call)

    async def follower() -> None:
        after: str | None = None
        while True:
            params = {"limit": "7", "wait": "1", **({"after": after} if after else {})}
            page = await feed(api, **params)
            seen.extend(page["items"])
            after = page["next"]
            if stop.is_set() and not page["items"]:
                return

    async def writers(phase: int) -> None:
        await asyncio.gather(*(writer(phase * 8 + n) for n in range(8)))

    following = asyncio.create_task(follower())
    await writers(0)  # 8 concurrent writers, projected as they go, followed as they land
    await ctx.projector.stop()
    await writers(1)  # entries pile up in the outbox while no projector runs
    restarted = asyncio.create_task(ctx.projector.start())
    await writers(2)  # the new run catches up while writers go on
    await restarted
    await ctx.projector.drain()
    stop.set()
    await asyncio.wait_for(following, 60)

    stored = sorted([int(d["_id"]) async for d in ctx.mongo.transactions.find({}, {"_id": 1})])
    ids = [e["id"] for e in seen]
    assert len(ids) == len(set(ids)), "an event was delivered twice"
    assert sorted(ids) == stored, "an event was missed"
    per_user: dict[int, list[int]] = defaultdict(list)
    for event in seen:
        per_user[event["data"]["user_id"]].append(event["id"])
    for user_ids in per_user.values():
        assert user_ids == sorted(user_ids), "a user's events out of order"


@pytest.mark.parametrize("limit", ["1", "100"])
async def test_ids_that_never_got_a_transaction_do_not_end_a_walk(api: Api, ctx: Context, limit: str) -> None:
    keys = ctx.ledger.keys
    await deposit(ctx.ledger, 1, 100)
    await ctx.projector.drain()
    _, after = await walk(api)
    # Ids taken and never written (a script failing after taking them): the watermark passes them.
    await ctx.redis.hincrby(keys.meta(keys.partition_of(1)), "seq", 40)
    await deposit(ctx.ledger, 1, 200)
    await ctx.projector.drain()
    page = await feed(api, after=after, limit=limit)
    assert [e["data"]["amount"] for e in page["items"]] == ["2.00"]
    assert (await feed(api, after=page["next"]))["items"] == []


async def test_wait_returns_as_soon_as_an_event_lands(api: Api, ctx: Context) -> None:
    await deposit(ctx.ledger, 1, 100)
    await ctx.projector.drain()
    _, after = await walk(api)
    waiting = asyncio.create_task(feed(api, after=after, wait="30"))
    await asyncio.sleep(0.3)  # (ordering only: the request is most likely held open by now)
    await ok(await api.post("/v1/deposits", {"user_id": 5, "amount": "7.00"}, **PAY))
    # Held for 30 s unless the projector's watermark advance wakes it; no drain: the running projector lands it.
    page = await asyncio.wait_for(waiting, 20)
    assert [(e["data"]["user_id"], e["data"]["amount"]) for e in page["items"]] == [(5, "7.00")]


async def test_wait_ends_empty_after_its_seconds_when_nothing_lands(api: Api, ctx: Context) -> None:
    await deposit(ctx.ledger, 1, 100)
    await ctx.projector.drain()
    _, after = await walk(api)
    assert await feed(api, after=after, wait="1") == {"items": [], "next": after}


async def test_a_bad_cursor_is_invalid_cursor(api: Api, ctx: Context) -> None:
    await deposit(ctx.ledger, 1, 100)
    await ctx.projector.drain()
    good = (await feed(api))["next"]
    payload, signature = good.split(".")
    other_layout = EventCursor("test-secret", ctx.ledger.keys.partitions + 1).encode([0] * 17)
    other_secret = EventCursor("another-secret", ctx.ledger.keys.partitions).encode([0] * 16)
    history_cursor = "eyJ2IjoxfQ.c2ln"
    top = 2**63 // MAX_PARTITIONS
    beyond = EventCursor("test-secret", ctx.ledger.keys.partitions).encode([top] * 16)
    for bad in (
        "x",
        "",
        good + "x",
        payload + ".",
        "A" + good,
        f"{payload}.{signature[:-2]}",
        other_layout,
        other_secret,
        history_cursor,
        beyond,
        "A" * MAX_EVENT_CURSOR_LENGTH + ".A",
        good + " ",
    ):
        problem(await api.get(f"/v1/events?{urlencode({'after': bad})}", token="tok-events"), 400, "invalid_cursor")


async def test_only_events_and_admin_may_read_the_feed(api: Api) -> None:
    problem(await api.get("/v1/events", token=None), 401, "unauthenticated")
    problem(await api.get("/v1/events", token="wrong"), 401, "unauthenticated")
    for token in ("tok-payments", "tok-orders", "tok-support", "tok-accounting"):
        problem(await api.get("/v1/events", token=token), 403, "forbidden")
    for token in ("tok-events", "tok-admin"):
        assert (await api.get("/v1/events", token=token)).status == 200


@pytest.mark.parametrize(
    "query",
    [
        "limit=0",
        f"limit={MAX_LIMIT + 1}",
        "limit=1.0",
        "limit=+5",
        "limit=%205",
        "limit=",
        "limit=ten",
        "limit=1&limit=1",
        "wait=31",
        "wait=-1",
        "wait=0.5",
        "wait=",
        "after=x&after=x",
        "cursor=x",
        "since=1",
    ],
)
async def test_query_parameters_are_taken_exactly_as_written_or_refused(api: Api, query: str) -> None:
    problem(await api.get(f"/v1/events?{query}", token="tok-events"), 400, "validation_error")


async def test_limit_bounds_are_accepted(api: Api, ctx: Context) -> None:
    for n in range(3):
        await deposit(ctx.ledger, n + 1, 100)
    await ctx.projector.drain()
    assert len((await feed(api, limit="1"))["items"]) == 1
    assert len((await feed(api, limit=str(MAX_LIMIT)))["items"]) == 3
    assert len((await feed(api, limit="2", wait="0"))["items"]) == 2


async def test_a_held_request_answers_at_once_when_the_process_stops(api: Api, ctx: Context) -> None:
    waiting = asyncio.create_task(feed(api, wait="30"))
    await asyncio.sleep(0.3)  # (ordering only: the request is most likely held open by now)
    ctx.events.waker.release()  # what a stopping worker does before it drains its requests
    page = await asyncio.wait_for(waiting, 20)
    assert page["items"] == [] and page["next"]
    assert await asyncio.wait_for(feed(api, wait="30"), 20) == page  # and nothing waits any more
