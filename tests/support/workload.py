"""Workloads that move money: straight through the ledger scripts (no HTTP, a random mix), and HTTP
clients through faults (each request retried with its Idempotency-Key until answered)."""

from __future__ import annotations

import asyncio
import itertools
import random
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import orjson
from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest
from tornado.iostream import StreamClosedError

from billing.ledger.outcomes import Outcome, Refused
from billing.ledger.scripts import Ledger


async def run(ledger: Ledger, call: tuple[str, list[str], list[Any]]) -> Outcome:
    name, keys, args = call
    return await ledger.run(name, None, "", keys, args)


async def deposit(ledger: Ledger, user_id: int, amount: int, comment: str | None = None) -> Outcome:
    return await run(ledger, ledger.deposit_call(user_id, amount, comment))


async def mixed_workload(ledger: Ledger, rng: random.Random, operations: int, users: int = 6) -> dict[str, int]:
    """Random deposits, withdrawals, transfers, reservations, recognitions, cancels and refunds; counts by
    outcome ("deposit:applied", "withdraw:refused:insufficient_funds", ...)."""
    open_orders: list[tuple[int, int, int]] = []
    recognized: list[tuple[int, int, int]] = []  # some refused (over the reservation): their refunds are refused
    statuses: dict[str, int] = {}
    next_order = 1
    for _ in range(operations):
        uid = rng.randint(1, users)
        kind = rng.choice(["deposit", "deposit", "withdraw", "transfer", "reserve", "reserve", "settle", "refund"])
        if kind == "deposit":
            call = ledger.deposit_call(uid, rng.randint(1, 50_000), rng.choice([None, "top-up"]))
        elif kind == "withdraw":
            call = ledger.withdraw_call(uid, rng.randint(1, 20_000), None)
        elif kind == "transfer":
            other = rng.choice([u for u in range(1, users + 2) if u != uid])
            call = ledger.transfer_call(uid, other, rng.randint(1, 20_000), "gift")
        elif kind == "reserve":
            sid = rng.randint(1, 3)
            call = ledger.reserve_call(uid, sid, next_order, rng.randint(1, 15_000), f"Service {sid}", None)
            open_orders.append((uid, sid, next_order))
            next_order += 1
        elif kind == "refund" and recognized:
            u, s, o = rng.choice(recognized)
            call = ledger.refund_call(u, s, o, rng.randint(1, 8_000), rng.choice([None, "damaged"]))
        elif open_orders:
            u, s, o = open_orders.pop(rng.randrange(len(open_orders)))
            if rng.random() < 0.6:
                call = ledger.recognize_call(u, s, o, rng.randint(1, 15_000))
                recognized.append((u, s, o))
            else:
                call = ledger.cancel_call(u, s, o, "changed my mind")
        else:
            continue
        outcome = await run(ledger, call)
        result = f"refused:{outcome.code}" if isinstance(outcome, Refused) else type(outcome).__name__.lower()
        label = f"{call[0]}:{result}"
        statuses[label] = statuses.get(label, 0) + 1
    return statuses


# ---- HTTP clients through faults ----------------------------------------------------------

# Answers that settle an operation: money moved (201, 200 for a recognize) or a business refusal the ledger
# recorded.
FINAL = {200: "recognized", 201: "moved", 404: "account_not_found", 409: "refused"}
# Answers that mean "not applied, or not known to be": retry with the same key.
RETRYABLE = {599, 503}


@dataclass
class Acked:
    """One operation the service acknowledged: what was asked and the answer that settled it."""

    op: str
    path: str
    key: str
    payload: dict[str, Any]
    status: int
    body: dict[str, Any]
    replayed: bool
    attempts: int


# The service of the reservations nobody closes (the orders that are paid for use services 1 to 3).
EXPIRING_SERVICE = 9


@dataclass
class Workload:
    """Several clients depositing, withdrawing and transferring among a few users; a share `orders` of their turns
    (with a token that has the orders role) pay for orders and refund part of the charge; with reserve_share > 0,
    that share of the other operations are reservations that nobody closes: each expires after 1 or 2 seconds."""

    base_url: str
    token: str
    users: int = 6
    seed: int = 7
    orders: float = 0.0
    reserve_share: float = 0.0
    acked: list[Acked] = field(default_factory=list)
    stats: Counter = field(default_factory=Counter)
    unexpected: list[tuple[str, int, bytes]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.http = AsyncHTTPClient(force_instance=True, max_clients=64)
        self._orders = itertools.count(1)

    def close(self) -> None:
        self.http.close()

    async def run_client(self, client_id: int, stop: asyncio.Event) -> None:
        rng = random.Random(self.seed * 1000 + client_id)
        n = 0
        while not stop.is_set():
            n += 1
            if self.orders and rng.random() < self.orders:
                await self.order(rng, client_id * 1_000_000 + n, f"c{client_id}-op{n}")
                continue
            op, path, payload = self._next_operation(rng)
            await self.until_acked(op, path, payload, f"c{client_id}-op{n}")

    async def order(self, rng: random.Random, order_id: int, key: str) -> None:
        """Reserve, recognize part or all, refund part of the charge, then ask for a second refund that may fit
        or is over what is left (409). Each step is retried with its own key until answered, so the order is
        always settled (nothing stays reserved) once it is reserved."""
        ref = {"user_id": rng.randint(1, self.users), "service_id": rng.randint(1, 3), "order_id": order_id}
        amount = rng.randint(2, 50_000)
        reserved = await self.until_acked("reserve", "/v1/reservations", {**ref, "amount": _rubles(amount)}, key + "r")
        if reserved.status != 201:
            return
        charge = rng.choice([amount, rng.randint(1, amount)])
        await self.until_acked("recognize", "/v1/reservations/recognize", {**ref, "amount": _rubles(charge)}, key + "c")
        first = rng.randint(1, charge)
        await self.until_acked("refund", "/v1/refunds", {**ref, "amount": _rubles(first)}, key + "f1")
        second = rng.choice([charge - first + 1, rng.randint(1, charge)])
        await self.until_acked("refund", "/v1/refunds", {**ref, "amount": _rubles(second)}, key + "f2")

    def _next_operation(self, rng: random.Random) -> tuple[str, str, dict[str, Any]]:
        user = rng.randint(1, self.users)
        if rng.random() < self.reserve_share:
            amount = _rubles(rng.randint(1, 50_000))
            order = next(self._orders)
            payload = {"user_id": user, "service_id": EXPIRING_SERVICE, "order_id": order, "amount": amount}
            return "reserve", "/v1/reservations", {**payload, "expires_in": rng.choice([1, 2])}
        roll = rng.random()
        if roll < 0.4:
            return "deposit", "/v1/deposits", {"user_id": user, "amount": _rubles(rng.randint(1, 500_000))}
        if roll < 0.55:
            return "withdrawal", "/v1/withdrawals", {"user_id": user, "amount": _rubles(rng.randint(1, 100_000))}
        other = rng.choice([u for u in range(1, self.users + 1) if u != user])
        amount = _rubles(rng.randint(1, 200_000))
        return "transfer", "/v1/transfers", {"from_user_id": user, "to_user_id": other, "amount": amount}

    async def until_acked(self, op: str, path: str, payload: dict[str, Any], key: str) -> Acked:
        """POST with the same key until a settling answer; 503 and lost connections are retried."""
        attempts = 0
        while True:
            attempts += 1
            self.stats["requests"] += 1
            status, headers, body = await self.post(path, payload, key)
            if status in FINAL:
                parsed = orjson.loads(body)
                acked = Acked(
                    op, path, key, payload, status, parsed, headers.get("Idempotent-Replayed") == "true", attempts
                )
                self.acked.append(acked)
                self.stats["retries"] += attempts - 1
                return acked
            if status == 599:
                self.stats["connection_errors"] += 1
            elif status == 503:
                self.stats["unavailable_503"] += 1
            else:
                # Not a documented answer under faults (e.g. 500): remember it, and retry like a client would.
                self.unexpected.append((key, status, body[:500]))
            await asyncio.sleep(min(0.05 * attempts, 0.5))

    async def post(self, path: str, payload: dict[str, Any], key: str) -> tuple[int, Any, bytes]:
        request = HTTPRequest(
            self.base_url + path,
            method="POST",
            body=orjson.dumps(payload),
            headers={
                "Authorization": f"Bearer {self.token}",
                "Content-Type": "application/json",
                "Idempotency-Key": key,
            },
            request_timeout=30,
            connect_timeout=5,
        )
        try:
            answer = await self.http.fetch(request, raise_error=False)
        except (OSError, StreamClosedError, HTTPClientError) as exc:
            # The connection broke (the service was killed mid-request): the outcome is unknown.
            return 599, {}, repr(exc).encode()
        return answer.code, answer.headers, answer.body or b""


def _rubles(kopecks: int) -> str:
    return f"{kopecks // 100}.{kopecks % 100:02d}"


def kopecks(amount: str) -> int:
    rubles, _, cents = amount.partition(".")
    return int(rubles) * 100 + int((cents + "00")[:2])


@dataclass
class Expected:
    """What the ledger must hold if every acknowledged operation applied exactly once."""

    balances: dict[int, int]
    deposited: int
    withdrawn: int
    transaction_ids: list[int]
    moved: int
    revenue: int = 0
    refunded: int = 0


def expected_from(acked: list[Acked]) -> Expected:
    """What the acknowledged operations must have done; balances are available ones (every order is settled)."""
    balances: dict[int, int] = {}
    deposited = withdrawn = moved = revenue = refunded = 0
    ids: list[int] = []
    for a in acked:
        if a.status not in (200, 201) or "transaction" not in a.body:
            continue
        moved += 1
        p = a.payload
        amount = kopecks(p["amount"])
        assert kopecks(a.body["transaction"]["amount"]) == amount, (a.key, a.body)
        ids.append(int(a.body["transaction"]["id"]))
        if a.op == "reserve" and p["service_id"] == EXPIRING_SERVICE:
            continue  # nobody closes it: it expires, and its release (answered to nobody) gives the money back
        if a.op == "deposit":
            balances[p["user_id"]] = balances.get(p["user_id"], 0) + amount
            deposited += amount
        elif a.op == "withdrawal":
            balances[p["user_id"]] = balances.get(p["user_id"], 0) - amount
            withdrawn += amount
        elif a.op == "reserve":
            balances[p["user_id"]] = balances.get(p["user_id"], 0) - amount
        elif a.op == "recognize":  # the charge leaves reserved; the remainder comes back to available
            balances[p["user_id"]] += kopecks(a.body["reservation"]["amount"]) - amount
            revenue += amount
            if a.body.get("release_transaction"):
                ids.append(int(a.body["release_transaction"]["id"]))
        elif a.op == "refund":
            balances[p["user_id"]] += amount
            refunded += amount
        else:
            balances[p["from_user_id"]] = balances.get(p["from_user_id"], 0) - amount
            balances[p["to_user_id"]] = balances.get(p["to_user_id"], 0) + amount
            ids.append(int(a.body["recipient_transaction"]["id"]))
    return Expected(balances, deposited, withdrawn, ids, moved, revenue, refunded)
