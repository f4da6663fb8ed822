"""Webhook deliveries against a local receiver that fails, times out and answers slowly as scripted: every event
arrives, in feed order, signed, through failures, crashes and two dispatchers sharing the work."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import random
from collections import defaultdict
from collections.abc import AsyncIterator, Mapping
from typing import Any

import pytest

from billing.bootstrap import Context
from billing.core.config import Settings
from billing.core.schemas import WebhookRequest
from billing.webhooks.dispatcher import (
    MAX_DELAY_SECONDS,
    Clock,
    HttpSender,
    WebhookDispatcher,
    backoff,
)
from billing.webhooks.store import WebhookStore
from tests.support.webhook_receiver import OK, Answer, Delivery, Receiver, receiving
from tests.support.workload import deposit, run

TIMEOUT = 0.3  # the test senders' POST timeout (the service's is 5 s)


class FakeClock(Clock):
    """Time under the test's control: sleeping moves it on at once."""

    def __init__(self, start: float = 1_795_000_000.0) -> None:
        self.t = start
        self.slept: list[float] = []

    def now(self) -> float:
        return self.t

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.t += seconds
        await asyncio.sleep(0)


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return settings.model_copy(update={"webhook_allow_private": True})  # the receiver is on 127.0.0.1


@pytest.fixture
async def hooks(ctx: Context) -> AsyncIterator[Context]:
    """The context without its own dispatcher: each test runs the dispatchers it needs."""
    assert ctx.webhook_dispatcher is not None
    await ctx.webhook_dispatcher.stop()
    yield ctx


def dispatcher(
    ctx: Context, clock: Clock | None = None, lease_ms: int = 15_000, timeout: float = TIMEOUT
) -> WebhookDispatcher:
    return WebhookDispatcher(
        WebhookStore(ctx.redis, ctx.ledger.keys), ctx.events, HttpSender(True, timeout=timeout), clock, lease_ms
    )


async def create(ctx: Context, name: str, url: str, types: list[str] | None = None) -> str:
    answer = await ctx.webhooks.put(name, WebhookRequest(url=url, types=types))
    assert answer["secret"]
    return str(answer["secret"])


def signed(secret: str, delivery: Delivery) -> bool:
    parts = dict(part.split("=", 1) for part in delivery.signature.split(","))
    expected = hmac.new(secret.encode(), f"{parts['t']}.".encode() + delivery.body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(parts["v1"], expected)


def batches(deliveries: list[Delivery]) -> list[tuple[str, list[dict[str, Any]]]]:
    """Each delivery id once, in the order first sent; every resend of one carries the same events, and once a
    batch is acknowledged nothing of it or before it comes again (no batch goes out of order)."""
    order: list[str] = []
    events: dict[str, list[dict[str, Any]]] = {}
    for d in deliveries:
        if d.delivery_id in events:
            assert [e["id"] for e in d.events] == [e["id"] for e in events[d.delivery_id]], d.delivery_id
            assert order[-1] == d.delivery_id, "an older batch was sent again after a newer one"
        else:
            order.append(d.delivery_id)
            events[d.delivery_id] = d.events
    return [(i, events[i]) for i in order]


def check_feed_order(events: list[dict[str, Any]], expected_ids: set[int]) -> None:
    ids = [e["id"] for e in events]
    assert len(ids) == len(set(ids)), "an event was delivered in two batches"
    assert set(ids) == expected_ids
    per_user: dict[int, list[int]] = defaultdict(list)
    for e in events:
        per_user[e["data"]["user_id"]].append(e["id"])
    assert all(seq == sorted(seq) for seq in per_user.values()), "a user's events out of order"


async def transaction_ids(ctx: Context) -> set[int]:
    """Every transaction made so far (once projected)."""
    await ctx.projector.drain()
    return {int(d["_id"]) async for d in ctx.mongo.transactions.find({}, {"_id": 1})}


async def deposits(ctx: Context, count: int, users: int, seed: int = 1) -> None:
    rng = random.Random(seed)
    for n in range(count):
        await deposit(ctx.ledger, rng.randint(1, users), 100 + n)
        if n % 25 == 0:
            await asyncio.sleep(0)  # let the dispatcher deliver while money moves


SCRIPT = [OK, Answer(500), Answer(delay=2 * TIMEOUT), Answer(delay=TIMEOUT / 3), Answer(drop=True), Answer(503), OK]


async def test_every_event_arrives_once_per_batch_in_order_and_signed_through_failures(hooks: Context) -> None:
    ctx = hooks
    clock = FakeClock()
    async with receiving(lambda n, _w: SCRIPT[n % len(SCRIPT)]) as receiver:
        secret = await create(ctx, "orders", receiver.url + "/in")
        refunds = await create(ctx, "only-withdrawals", receiver.url + "/w", types=["withdrawal"])
        await deposits(ctx, 160, users=9)  # a backlog: the first batches are full
        d = dispatcher(ctx, clock)
        await d.start()
        try:
            await deposits(ctx, 100, users=9)
            for uid in range(1, 4):
                await run(ctx.ledger, ctx.ledger.withdraw_call(uid, 1, "out"))
            expected = await transaction_ids(ctx)

            def delivered(webhook: str, count: int) -> bool:
                acked = {e["id"] for e in receiver.acknowledged_events(webhook)}
                return len(acked) == count

            await receiver.wait_for(lambda: delivered("orders", len(expected)) and delivered("only-withdrawals", 3))
        finally:
            await d.stop()
    deliveries = receiver.of("orders")
    assert all(signed(secret, x) for x in deliveries)
    assert all(signed(refunds, x) for x in receiver.of("only-withdrawals"))
    assert {x.answer for x in deliveries} >= set(SCRIPT), "every scripted answer was met"
    sent = batches(deliveries)
    assert all(1 <= len(events) <= 100 for _, events in sent)
    assert any(len(events) == 100 for _, events in sent)
    check_feed_order([e for _, events in sent for e in events], expected)
    # Descriptions are Russian; the filtered webhook got exactly the withdrawals.
    assert sent[0][1][0]["data"]["description"].startswith("Пополнение")
    withdrawals = [e for _, events in batches(receiver.of("only-withdrawals")) for e in events]
    assert [e["data"]["type"] for e in withdrawals] == ["withdrawal"] * 3
    # Failed attempts waited as scheduled (on the test's clock): 1 s after a first failure.
    assert clock.slept and min(clock.slept) >= 0 and FakeClock().t < clock.t


async def test_the_backoff_doubles_to_an_hour_and_retries_the_same_batch_past_a_day(hooks: Context) -> None:
    ctx = hooks
    assert [backoff(n) for n in range(1, 15)] == [2.0**k for k in range(12)] + [MAX_DELAY_SECONDS] * 2
    clock = FakeClock()
    answers = {"status": 500}
    async with receiving(lambda _n, _w: Answer(answers["status"])) as receiver:
        await create(ctx, "flaky", receiver.url)
        await deposit(ctx.ledger, 1, 500)
        await ctx.projector.drain()
        d = dispatcher(ctx, clock)
        store = d.store
        assert await store.take_lease("flaky", "test-token", 60_000)
        start = clock.t
        waits: list[float] = []
        while clock.t - start < 25 * 3600:
            delay = await d.step("flaky", "test-token")
            assert delay is not None and delay > 0
            state = await store.get("flaky")
            assert state is not None and state.next_attempt_at == round((clock.t + delay) * 1000)
            waits.append(delay)
            # Half-way through the wait nothing is sent; at its end the next attempt goes.
            clock.t += delay / 2
            assert await d.step("flaky", "test-token") == pytest.approx(delay / 2, abs=0.002)
            clock.t += delay / 2
        assert waits[:13] == [backoff(n) for n in range(1, 14)]
        assert set(waits[12:]) == {MAX_DELAY_SECONDS}
        assert len(receiver.deliveries) == len(waits) > 30  # past 24 h, still trying
        assert len({x.delivery_id for x in receiver.deliveries}) == 1
        state = await store.get("flaky")
        assert state is not None and state.attempts == len(waits) and state.last_error == "HTTP 500"
        assert state.position == [0] * ctx.ledger.keys.partitions  # nothing passed while unacknowledged
        answers["status"] = 204
        assert await d.step("flaky", "test-token") == 0
        state = await store.get("flaky")
        assert state is not None and state.batch_id is None and state.attempts == 0 and state.last_error is None
        assert sum(state.position) == 1
        assert await d.step("flaky", "test-token") is None  # caught up: waits for the feed
        d.sender.close()


class CrashingSender(HttpSender):
    """Raises inside its first POST, as a bug or a dying process would mid-batch."""

    crashed = False

    async def post(self, url: str, body: bytes, headers: Mapping[str, str]) -> str | None:
        if not self.crashed:
            self.crashed = True
            await super().post(url, body, headers)
            raise RuntimeError("crash after sending")
        return await super().post(url, body, headers)


@pytest.mark.parametrize("how", ["released", "died", "task crash"])
async def test_a_batch_interrupted_mid_delivery_is_sent_again_with_its_delivery_id(hooks: Context, how: str) -> None:
    ctx = hooks
    first = asyncio.Event()

    def script(n: int, _webhook: str) -> Answer:
        if n == 0:
            first.set()
            return Answer(500, delay=1.0)  # still open when its dispatcher stops; never acknowledged
        return OK

    async with receiving(script) as receiver:
        await create(ctx, "orders", receiver.url)
        await deposits(ctx, 30, users=5)
        expected = await transaction_ids(ctx)
        await ctx.projector.drain()
        if how == "task crash":
            a = WebhookDispatcher(
                WebhookStore(ctx.redis, ctx.ledger.keys), ctx.events, CrashingSender(True), FakeClock()
            )
            await a.start()
        else:
            a = dispatcher(ctx, FakeClock(), lease_ms=400, timeout=5.0)
            await a.start()
            await asyncio.wait_for(first.wait(), 10)
            await a.stop(release=how == "released")
            b = dispatcher(ctx, FakeClock(), lease_ms=400)
            await b.start()
        try:
            await receiver.wait_for(lambda: {e["id"] for e in receiver.acknowledged_events("orders")} == expected)
        finally:
            await a.stop()
            if how != "task crash":
                await b.stop()
    one, two = receiver.deliveries[:2]
    assert one.delivery_id == two.delivery_id and one.body == two.body
    check_feed_order([e for _, events in batches(receiver.deliveries) for e in events], expected)


async def first_post_open(ctx: Context, receiver: Receiver, sender: WebhookDispatcher) -> None:
    """Webhook "w" with one deposit to deliver, `sender` started, and its first POST open at the receiver."""
    await create(ctx, "w", receiver.url)
    await deposit(ctx.ledger, 1, 100)
    await sender.start()
    async with asyncio.timeout(10):
        while not receiver.open_now["w"]:
            await asyncio.sleep(0.01)


async def test_a_stopping_dispatcher_keeps_the_lease_until_its_post_is_answered(hooks: Context) -> None:
    """A graceful stop in the middle of a POST waits for the answer and stores it before it gives the lease
    back: the next holder neither sends while that POST is open nor sends its acknowledged batch again."""
    ctx = hooks
    async with receiving(lambda n, _w: Answer(delay=0.5 if n == 0 else 0.0)) as receiver:
        a, b = dispatcher(ctx, timeout=2.0), dispatcher(ctx, timeout=2.0)
        try:
            await first_post_open(ctx, receiver, a)
            await b.refresh()
            assert "w" not in b.serving  # a holds the lease
            await a.stop()
            first = receiver.of("w")[0]
            assert first.finished, "stop() returned while its POST was still open"
            await b.refresh()
            assert "w" in b.serving
            await deposit(ctx.ledger, 2, 200)
            expected = await transaction_ids(ctx)
            await receiver.wait_for(lambda: {e["id"] for e in receiver.acknowledged_events("w")} == expected)
        finally:
            await a.stop()
            await b.stop()
    assert receiver.most_open["w"] == 1
    ids = [d.delivery_id for d in receiver.of("w")]
    assert len(ids) == len(set(ids)) == 2, "the batch acknowledged during the stop was sent again"


async def test_a_post_longer_than_the_stop_grace_keeps_the_lease_until_it_runs_out(
    hooks: Context, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A stop that gives up waiting for its POST does not release the lease: nobody sends while the POST may
    still be open, and the webhook passes on once the lease has run out."""
    monkeypatch.setattr("billing.webhooks.dispatcher.STOP_GRACE_SECONDS", 0.2)
    ctx = hooks
    async with receiving(lambda n, _w: Answer(delay=0.8 if n == 0 else 0.0)) as receiver:
        a, b = dispatcher(ctx, timeout=2.0, lease_ms=1500), dispatcher(ctx, timeout=2.0)
        try:
            await first_post_open(ctx, receiver, a)
            await a.stop()
            await b.refresh()
            assert "w" not in b.serving, "the lease was released while the POST was open"
            expected = await transaction_ids(ctx)
            await asyncio.sleep(1.5)  # the lease runs out
            await b.refresh()
            assert "w" in b.serving
            await receiver.wait_for(lambda: {e["id"] for e in receiver.acknowledged_events("w")} == expected)
        finally:
            await a.stop()
            await b.stop()
    assert receiver.most_open["w"] == 1


async def test_two_dispatchers_never_deliver_one_webhook_at_once(hooks: Context) -> None:
    await two_dispatchers_share_the_webhooks(hooks)


async def two_dispatchers_share_the_webhooks(ctx: Context) -> None:
    """Three webhooks, two dispatchers handing them over (one stops, one dies) while deposits of 12 users go on:
    every event arrives once, in its user's order, with one delivery in flight per webhook at any time (also run
    on Redis Cluster: tests/processes/test_cluster_webhooks.py)."""
    names = ["a", "b", "c"]
    async with receiving(lambda _n, _w: Answer(delay=0.01)) as receiver:
        secrets = {name: await create(ctx, name, f"{receiver.url}/{name}") for name in names}
        workers = [dispatcher(ctx, lease_ms=600), dispatcher(ctx, lease_ms=600)]
        for w in workers:
            await w.start()
        try:
            await deposits(ctx, 150, users=12, seed=2)
            # Hand the webhooks over while deliveries go on: one worker stops and comes back, one dies.
            await workers[0].stop()
            workers[0] = dispatcher(ctx, lease_ms=600)
            await workers[0].start()
            await deposits(ctx, 150, users=12, seed=3)
            await workers[1].stop(release=False)
            workers[1] = dispatcher(ctx, lease_ms=600)
            await workers[1].start()
            await deposits(ctx, 100, users=12, seed=4)
            expected = await transaction_ids(ctx)
            await receiver.wait_for(
                lambda: all({e["id"] for e in receiver.acknowledged_events(n)} == expected for n in names)
            )
        finally:
            for w in workers:
                await w.stop()
    for name in names:
        assert receiver.most_open[name] == 1, f"{name}: two deliveries were in flight at once"
        check_feed_order([e for _, events in batches(receiver.of(name)) for e in events], expected)
        deliveries = receiver.of(name)
        assert all(x.finished <= y.started for x, y in zip(deliveries, deliveries[1:], strict=False))
        assert all(signed(secrets[name], d) for d in deliveries)


async def test_a_webhook_receives_the_events_made_after_it_and_stops_when_deleted(hooks: Context) -> None:
    ctx = hooks
    async with receiving() as receiver:
        await deposit(ctx.ledger, 1, 100)  # before the webhook: never delivered
        await create(ctx, "late", receiver.url)
        before = await transaction_ids(ctx)
        d = dispatcher(ctx)
        await d.start()
        try:
            await deposit(ctx.ledger, 2, 200)
            expected = await transaction_ids(ctx) - before
            await receiver.wait_for(lambda: {e["id"] for e in receiver.acknowledged_events("late")} == expected)
            await ctx.webhooks.delete("late")
            await deposit(ctx.ledger, 3, 300)
            await ctx.projector.drain()
            await d.refresh()  # the lease round sees the deletion
            assert "late" not in d.serving
        finally:
            await d.stop()
    assert [e["data"]["amount"] for e in receiver.acknowledged_events("late")] == ["2.00"]
