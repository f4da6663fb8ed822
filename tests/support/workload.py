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
    """Random deposits, withdrawals, transfers, reservations, recognitions and cancels; counts by outcome
    ("deposit:applied", "withdraw:refused:insufficient_funds", ...)."""
    open_orders: list[tuple[int, int, int]] = []
    statuses: dict[str, int] = {}
    next_order = 1
    for _ in range(operations):
        uid = rng.randint(1, users)
        kind = rng.choice(["deposit", "deposit", "withdraw", "transfer", "reserve", "reserve", "settle"])
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
        elif open_orders:
            u, s, o = open_orders.pop(rng.randrange(len(open_orders)))
            if rng.random() < 0.6:
                call = ledger.recognize_call(u, s, o, rng.randint(1, 15_000))
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

# Answers that settle an operation: money moved (201) or a business refusal the ledger recorded.
FINAL = {201: "moved", 404: "account_not_found", 409: "refused"}
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


@dataclass
class Workload:
    """Several clients depositing, withdrawing and transferring among a few users; with reserve_share > 0, that share
    of the operations are reservations (the token needs the orders role) that nobody closes: each expires after 1
    or 2 seconds."""

    base_url: str
    token: str
    users: int = 6
    seed: int = 7
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
            op, path, payload = self._next_operation(rng)
            await self.until_acked(op, path, payload, f"c{client_id}-op{n}")

    def _next_operation(self, rng: random.Random) -> tuple[str, str, dict[str, Any]]:
        user = rng.randint(1, self.users)
        if rng.random() < self.reserve_share:
            amount = _rubles(rng.randint(1, 50_000))
            order = next(self._orders)
            payload = {"user_id": user, "service_id": 1, "order_id": order, "amount": amount}
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


def expected_from(acked: list[Acked]) -> Expected:
    balances: dict[int, int] = {}
    deposited = withdrawn = moved = 0
    ids: list[int] = []
    for a in acked:
        if a.status != 201:
            continue
        moved += 1
        p = a.payload
        amount = kopecks(p["amount"])
        assert kopecks(a.body["transaction"]["amount"]) == amount, (a.key, a.body)
        ids.append(int(a.body["transaction"]["id"]))
        if a.op == "reserve":
            continue  # nobody closes it: it expires, and its release (answered to nobody) gives the money back
        if a.op == "deposit":
            balances[p["user_id"]] = balances.get(p["user_id"], 0) + amount
            deposited += amount
        elif a.op == "withdrawal":
            balances[p["user_id"]] = balances.get(p["user_id"], 0) - amount
            withdrawn += amount
        else:
            balances[p["from_user_id"]] = balances.get(p["from_user_id"], 0) - amount
            balances[p["to_user_id"]] = balances.get(p["to_user_id"], 0) + amount
            ids.append(int(a.body["recipient_transaction"]["id"]))
    return Expected(balances, deposited, withdrawn, ids, moved)
