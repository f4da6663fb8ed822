"""Money movements straight through the ledger scripts (no HTTP), and a random mixed workload."""

from __future__ import annotations

import random
from typing import Any

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
