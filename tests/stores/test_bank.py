"""A Jepsen-style bank test: concurrent clients move money over HTTP; money is conserved to the kopeck.

8 clients run random deposits, transfers, withdrawals, reserves (some expiring after 1 s, released by the
running sweeper or by the recognize or cancel that comes too late), partial recognitions, cancels and partial
refunds (some of them sent twice with one Idempotency-Key, as a retrying client would) for BILLING_BANK_SECONDS (3 s by
default). Meanwhile a reader takes atomic snapshots (MULTI) of every account and every partition's totals hash.
Then:
- at every snapshot and at the end, in each ledger partition: sum(available + reserved) of its accounts ==
  deposited - withdrawn - revenue + refunded + transfers_in - transfers_out; over all partitions transfers_in ==
  transfers_out; nothing < 0;
- the totals hash equals the sums of the money that the responses say moved;
- ordered by transaction id, each user's transactions chain exactly (each *_after follows from the previous
  one), ending at the balance the API reports: the responses, with the releases of expired reservations (which
  answer nobody), are one serial history;
- after the projector drains, MongoDB holds exactly the transactions the responses returned; each
  reservation's status agrees with the reserved balance, and no reservation's refunds pass its charge.
"""

from __future__ import annotations

import asyncio
import os
import random
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import orjson
import pytest
from redis.asyncio.cluster import RedisCluster

from billing.bootstrap import Context
from billing.core.config import Settings
from billing.core.money import format_kopecks
from tests.support.api import Api, Response

# Also on `billing serve --workers 2` over a Redis Cluster (tests/support/cluster_service.py).
pytestmark = pytest.mark.cluster_server

CLIENTS = 8
USERS = 6  # in 6 partitions of 16 (users 1..6: 15, 5, 3, 0, 6, 12), all in one with BILLING_PARTITIONS=1
SERVICES = 3
SECONDS = float(os.environ.get("BILLING_BANK_SECONDS", "3"))
INITIAL = 1_000_00  # kopecks each user starts with

# transaction type -> (change of available, change of reserved) per kopeck of amount
DELTAS = {
    "deposit": (1, 0),
    "withdrawal": (-1, 0),
    "transfer_in": (1, 0),
    "transfer_out": (-1, 0),
    "reserve": (-1, 1),
    "charge": (0, -1),
    "release": (1, -1),
    "refund": (1, 0),
}


def kop(money: str) -> int:
    """ "12.34" -> 1234 (response money always has two fractional digits)."""
    whole, _, fraction = money.lstrip("-").partition(".")
    value = int(whole) * 100 + int(fraction)
    return -value if money.startswith("-") else value


@dataclass
class Observed:
    """What the clients saw: money moved per the responses, every transaction returned, open reservations."""

    deposited: int = 0
    withdrawn: int = 0
    revenue: int = 0
    refunded: int = 0
    transactions: dict[int, dict[str, Any]] = field(default_factory=dict)
    reservations: list[tuple[int, int, int, int]] = field(default_factory=list)  # user, service, order, amount
    charged: list[tuple[int, int, int, int]] = field(default_factory=list)  # user, service, order, charge
    counts: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    violations: list[str] = field(default_factory=list)
    next_order: int = 1

    def record(self, op: str, response: Response) -> dict[str, Any] | None:
        body = response.json
        self.counts[f"{op}:{response.status}"] += 1
        if response.status >= 500:
            self.violations.append(f"{op}: {response.status} {response.body!r}")
            return None
        if response.status >= 300:
            return None
        txns = [body[k] for k in ("transaction", "recipient_transaction", "release_transaction") if body.get(k)]
        for txn in txns:
            if int(txn["id"]) in self.transactions:
                self.violations.append(f"transaction {txn['id']} returned twice")
            self.transactions[int(txn["id"])] = {**txn, "user_id": _owner(op, body, txn)}
        return body


def _owner(op: str, body: dict[str, Any], txn: dict[str, Any]) -> int:
    if txn is body.get("recipient_transaction"):
        return body["recipient_balance"]["user_id"]
    return body["balance"]["user_id"]


class BankClient:
    """One client: a random mix of operations until the deadline."""

    def __init__(self, api: Api, seen: Observed, rng: random.Random, name: int) -> None:
        self.api, self.seen, self.rng, self.name = api, seen, rng, name
        self.keys = 0

    async def send(self, op: str, path: str, token: str, body: dict[str, Any]) -> Response:
        if self.rng.random() < 0.25:  # a retrying client: same key twice, the second is a pure replay
            self.keys += 1
            key = f"c{self.name}-{self.keys}"
            first = await self.api.post(path, body, token=token, key=key)
            again = await self.api.post(path, body, token=token, key=key)
            if (again.status, again.body) != (first.status, first.body) or again.headers.get(
                "Idempotent-Replayed"
            ) != "true":
                self.seen.violations.append(f"{op}: replay differs: {first.body!r} vs {again.body!r}")
            return first
        return await self.api.post(path, body, token=token)

    def user(self) -> int:
        return self.rng.randint(1, USERS)

    def amount(self, most: int = 300_00) -> int:
        return self.rng.randint(1, most)

    async def step(self) -> None:
        roll = self.rng.random()
        seen = self.seen
        if roll < 0.08:
            amount = self.amount()
            r = await self.send(
                "deposit", "/v1/deposits", "tok-payments", {"user_id": self.user(), "amount": format_kopecks(amount)}
            )
            if seen.record("deposit", r):
                seen.deposited += amount
        elif roll < 0.33:
            src, dst = self.rng.sample(range(1, USERS + 1), 2)
            body = {"from_user_id": src, "to_user_id": dst, "amount": format_kopecks(self.amount())}
            seen.record("transfer", await self.send("transfer", "/v1/transfers", "tok-payments", body))
        elif roll < 0.43:
            amount = self.amount(100_00)
            r = await self.send(
                "withdrawal",
                "/v1/withdrawals",
                "tok-payments",
                {"user_id": self.user(), "amount": format_kopecks(amount)},
            )
            if seen.record("withdrawal", r):
                seen.withdrawn += amount
        elif roll < 0.68:
            user, service, order, amount = (
                self.user(),
                self.rng.randint(1, SERVICES),
                seen.next_order,
                self.amount(200_00),
            )
            seen.next_order += 1
            body = {"user_id": user, "service_id": service, "order_id": order, "amount": format_kopecks(amount)}
            if self.rng.random() < 0.3:
                body["expires_in"] = 1
            if seen.record("reserve", await self.send("reserve", "/v1/reservations", "tok-orders", body)):
                seen.reservations.append((user, service, order, amount))
        elif seen.reservations:
            user, service, order, amount = self.rng.choice(seen.reservations)
            ref = {"user_id": user, "service_id": service, "order_id": order}
            if roll < 0.80:
                charge = self.rng.randint(1, amount + amount // 10)  # sometimes above the reservation: 409
                r = await self.send(
                    "recognize", "/v1/reservations/recognize", "tok-orders", {**ref, "amount": format_kopecks(charge)}
                )
                body = seen.record("recognize", r)
                if body and body.get("transaction"):
                    seen.revenue += charge
                    seen.charged.append((user, service, order, charge))
            elif roll < 0.92:
                # part of a charge back, sometimes more than is left (409), or of a reservation not recognized (409)
                if seen.charged and self.rng.random() < 0.8:
                    user, service, order, amount = self.rng.choice(seen.charged)
                    ref = {"user_id": user, "service_id": service, "order_id": order}
                amount = self.rng.randint(1, max(1, amount // 2))
                r = await self.send("refund", "/v1/refunds", "tok-orders", {**ref, "amount": format_kopecks(amount)})
                if seen.record("refund", r):
                    seen.refunded += amount
            else:
                seen.record("cancel", await self.send("cancel", "/v1/reservations/cancel", "tok-orders", ref))

    async def run(self, deadline: float) -> None:
        loop = asyncio.get_running_loop()
        while loop.time() < deadline:
            await self.step()


@pytest.fixture(params=[16, 1], ids=["16-partitions", "1-partition"])
def settings(settings: Settings, request: pytest.FixtureRequest) -> Settings:
    return settings.model_copy(update={"partitions": request.param})


Totals = dict[int, dict[str, int]]  # partition -> its totals hash


async def atomic_snapshot(ctx: Context) -> tuple[dict[int, tuple[int, int]], Totals, int]:
    """Every account, every partition's totals hash and the money in transit (transfers between partitions
    debited, not yet credited), read in one MULTI/EXEC: one instant of the ledger. The credit markers of the
    transits are read in the same MULTI, so it is read again while it finds a transit the one before did not.
    On a Redis Cluster a MULTI holds the keys of one slot: see partition_snapshots."""
    if isinstance(ctx.redis, RedisCluster):
        return await partition_snapshots(ctx)
    keys = ctx.ledger.keys
    known: dict[str, int] = {}
    while True:
        pipe = ctx.redis.pipeline(transaction=True)
        for user in range(1, USERS + 1):
            pipe.hmget(keys.account(user), "available", "reserved")
        for partition in keys.all():
            pipe.hgetall(keys.totals(partition))
            pipe.hgetall(keys.transits(partition))
        asked = list(known.items())
        for transfer_id, recipient in asked:
            pipe.get(keys.credited(recipient, int(transfer_id)))
        answers = await pipe.execute()
        accounts = {
            user: (int(a), int(r or 0))
            for user, (a, r) in zip(range(1, USERS + 1), answers[:USERS], strict=True)
            if a is not None
        }
        rest = answers[USERS:]
        totals = {p: {k.decode(): int(v) for k, v in rest[2 * p].items()} for p in keys.all()}
        transits = {
            tid.decode(): orjson.loads(raw)["transfer"] for p in keys.all() for tid, raw in rest[2 * p + 1].items()
        }
        markers = dict(zip((tid for tid, _ in asked), rest[2 * keys.partitions :], strict=True))
        if set(transits) <= set(markers):
            in_transit = sum(
                int(t["amount"])
                for tid, t in transits.items()
                if markers[tid] is None or orjson.loads(markers[tid])["result"] != "applied"
            )
            return accounts, totals, in_transit
        known.update({tid: int(t["to_partition"]) for tid, t in transits.items()})


async def partition_snapshots(ctx: Context) -> tuple[dict[int, tuple[int, int]], Totals, int]:
    """atomic_snapshot through a Redis Cluster: one MULTI per partition (its users' accounts, its totals and
    transits: one instant of that partition), then the credit markers of the transits found. The partitions are
    read at different instants, so only each partition's own conservation is exact while money moves; with no
    transfer under way (the end of the test) it is one instant of the whole ledger."""
    keys = ctx.ledger.keys
    accounts: dict[int, tuple[int, int]] = {}
    totals: Totals = {}
    transits: dict[str, dict[str, Any]] = {}
    for partition in keys.all():
        users = [user for user in range(1, USERS + 1) if keys.partition_of(user) == partition]
        pipe = ctx.redis.pipeline(transaction=True)
        # Raw commands: redis-py's (7.4) cluster MULTI hands the `keys` keyword of its hmget and hgetall to
        # reply callbacks that take none.
        for user in users:
            pipe.execute_command("HMGET", keys.account(user), "available", "reserved")
        pipe.execute_command("HGETALL", keys.totals(partition))
        pipe.execute_command("HGETALL", keys.transits(partition))
        *balances, raw_totals, raw_transits = await pipe.execute()
        accounts.update(
            {user: (int(a), int(r or 0)) for user, (a, r) in zip(users, balances, strict=True) if a is not None}
        )
        totals[partition] = {k.decode(): int(v) for k, v in raw_totals.items()}
        transits.update({tid.decode(): orjson.loads(raw)["transfer"] for tid, raw in raw_transits.items()})
    in_transit = 0
    for tid, transfer in transits.items():
        marker = await ctx.redis.get(keys.credited(int(transfer["to_partition"]), int(tid)))
        if marker is None or orjson.loads(marker)["result"] != "applied":
            in_transit += int(transfer["amount"])
    return accounts, totals, in_transit


def conservation_errors(
    ctx: Context, accounts: dict[int, tuple[int, int]], totals: Totals, in_transit: int, across: bool = True
) -> list[str]:
    """Each partition's accounts hold what its totals say; `across`: the transfers out of all partitions are the
    transfers into them plus the money in transit (the read must be one instant of every partition)."""
    errors = [f"user {u} negative: {a}, {r}" for u, (a, r) in accounts.items() if a < 0 or r < 0]
    for partition, t in totals.items():
        held = sum(a + r for u, (a, r) in accounts.items() if ctx.ledger.keys.partition_of(u) == partition)
        net = (
            t.get("deposited", 0)
            - t.get("withdrawn", 0)
            - t.get("revenue", 0)
            + t.get("refunded", 0)
            + t.get("transfers_in", 0)
            - t.get("transfers_out", 0)
            + t.get("transfers_reversed", 0)
        )
        if held != net:
            errors.append(f"partition {partition} not conserved: held {held} != {net} by its totals {t}")
    if not across:
        return errors
    moved_in = sum(t.get("transfers_in", 0) + t.get("transfers_reversed", 0) for t in totals.values())
    moved_out = sum(t.get("transfers_out", 0) for t in totals.values())
    if moved_out - moved_in != in_transit:
        errors.append(f"transfers_out {moved_out} - in and reversed {moved_in} != {in_transit} in transit")
    return errors


async def reader(ctx: Context, deadline: float, seen: Observed) -> int:
    loop = asyncio.get_running_loop()
    reads = 0
    while loop.time() < deadline:
        accounts, totals, in_transit = await atomic_snapshot(ctx)
        # Through a cluster the partitions are read one after another: only each one's own books are exact.
        across = not isinstance(ctx.redis, RedisCluster)
        seen.violations.extend(conservation_errors(ctx, accounts, totals, in_transit, across))
        reads += 1
        await asyncio.sleep(0.01)
    return reads


def chain_errors(transactions: dict[int, dict[str, Any]], final: dict[int, tuple[int, int]]) -> list[str]:
    """Ordered by id, every user's transactions must follow one from another and end at the final balance."""
    errors = []
    state: dict[int, tuple[int, int]] = {}
    for txn_id in sorted(transactions):
        txn = transactions[txn_id]
        user, amount = txn["user_id"], kop(txn["amount"])
        d_available, d_reserved = DELTAS[txn["type"]]
        available, reserved = state.get(user, (0, 0))
        expected = (available + d_available * amount, reserved + d_reserved * amount)
        got = (kop(txn["available_after"]), kop(txn["reserved_after"]))
        if got != expected:
            errors.append(f"txn {txn_id} {txn['type']} user {user}: after {got}, expected {expected}")
        state[user] = got
    for user, balance in final.items():
        if state.get(user, (0, 0)) != balance:
            errors.append(f"user {user}: transactions end at {state.get(user)}, balance is {balance}")
    return errors


async def test_bank_conserves_money_under_concurrent_clients(api: Api, ctx: Context) -> None:
    seen = Observed()
    for user in range(1, USERS + 1):
        r = await api.deposit(user, format_kopecks(INITIAL))
        assert seen.record("deposit", r)
        seen.deposited += INITIAL
    loop = asyncio.get_running_loop()
    deadline = loop.time() + SECONDS
    clients = [BankClient(api, seen, random.Random(1000 + n), n) for n in range(CLIENTS)]
    *_, reads = await asyncio.gather(*(c.run(deadline) for c in clients), reader(ctx, deadline, seen))
    assert seen.violations == [], seen.violations[:10]
    assert reads > 0

    # Every kind of operation really happened, both succeeding and refused.
    for name in (
        "deposit:201",
        "transfer:201",
        "withdrawal:201",
        "reserve:201",
        "recognize:200",
        "cancel:200",
        "refund:201",
        "refund:409",
    ):
        assert seen.counts[name] > 0, dict(seen.counts)
    assert any(k.endswith(":409") for k in seen.counts), dict(seen.counts)

    # Every reservation still reserved with a 1 s deadline is past it (the clocks raised 2 s, never waited for),
    # and released by one last sweep: none is left due, so each reservation's status agrees with the balance.
    assert ctx.reservation_sweeper is not None
    await ctx.reservation_sweeper.stop()
    now_ms = max([await ctx.ledger.partition_now(p) for p in ctx.ledger.keys.all()])
    for partition in ctx.ledger.keys.all():
        await ctx.redis.hset(ctx.ledger.keys.meta(partition), "clock", now_ms + 2_000)
    await ctx.reservation_sweeper.run_once()
    assert seen.counts["recognize:409"] + seen.counts["cancel:409"] > 0

    # The end state through the HTTP API.
    final: dict[int, tuple[int, int]] = {}
    for user in range(1, USERS + 1):
        r = await api.balance(user)
        assert r.status == 200
        final[user] = (kop(r.json["available"]), kop(r.json["reserved"]))
        assert final[user][0] >= 0 and final[user][1] >= 0
    held = sum(a + r for a, r in final.values())
    assert held + seen.revenue + seen.withdrawn == seen.deposited + seen.refunded  # from the responses alone
    totals = await ctx.ledger.totals()
    moved = {name: totals.pop(name, 0) for name in ("transfers_in", "transfers_out", "transfers_reversed")}
    assert totals == {
        "deposited": seen.deposited,
        "withdrawn": seen.withdrawn,
        "revenue": seen.revenue,
        "refunded": seen.refunded,
    }
    assert moved["transfers_in"] == moved["transfers_out"] > 0 and moved["transfers_reversed"] == 0
    accounts, snapshot, in_transit = await atomic_snapshot(ctx)
    assert accounts == final and in_transit == 0 and conservation_errors(ctx, accounts, snapshot, 0) == []
    # Over every partition: deposits - withdrawals - revenue + refunds = the money held + the money in transit.
    net = sum(
        t.get("deposited", 0) - t.get("withdrawn", 0) - t.get("revenue", 0) + t.get("refunded", 0)
        for t in snapshot.values()
    )
    assert net == sum(a + r for a, r in accounts.values()) + in_transit

    # The projector carries exactly the transactions the responses returned, and the releases of the reservations
    # that expired, into MongoDB (the history).
    await ctx.projector.drain(timeout=60)
    stored = {doc["_id"]: doc async for doc in ctx.mongo["transactions"].find({})}
    expired = {txn_id: doc for txn_id, doc in stored.items() if doc.get("reason") == "expired"}
    assert expired and not expired.keys() & seen.transactions.keys()
    for txn_id, doc in expired.items():
        seen.transactions[txn_id] = {
            "type": doc["type"],
            "user_id": doc["user_id"],
            **{k: format_kopecks(doc[k]) for k in ("amount", "available_after", "reserved_after")},
        }

    # The responses and the expired releases form one serial history that ends at the balances.
    assert chain_errors(seen.transactions, final) == []
    assert stored.keys() == seen.transactions.keys()
    for txn_id, doc in stored.items():
        returned = seen.transactions[txn_id]
        assert (doc["type"], doc["user_id"], doc["amount"]) == (
            returned["type"],
            returned["user_id"],
            kop(returned["amount"]),
        )
        assert (doc["available_after"], doc["reserved_after"]) == (
            kop(returned["available_after"]),
            kop(returned["reserved_after"]),
        )

    # Each user's reserved balance is the sum of that user's open reservations.
    open_amounts: dict[int, int] = defaultdict(int)
    refunded = 0
    for user, service, order, _ in seen.reservations:
        resv = await ctx.ledger.reservation(user, service, order)
        assert resv is not None
        if resv["status"] == "reserved":
            open_amounts[user] += int(resv["amount"])
        elif resv["status"] == "expired":  # released once: exactly one release of it, marked expired
            releases = [d for d in expired.values() if (d["service_id"], d["order_id"]) == (service, order)]
            assert len(releases) == 1 and releases[0]["user_id"] == user
        elif resv["status"] == "recognized":
            assert 0 < int(resv["recognized_amount"]) <= int(resv["amount"])
            assert int(resv.get("refunded_amount", 0)) <= int(resv["recognized_amount"])
        refunded += int(resv.get("refunded_amount", 0))
    assert refunded == seen.refunded
    assert {u: r for u, (_, r) in final.items() if r} == dict(open_amounts)
