"""A ledger spread over several months, written by the ledger scripts at times the test chooses.

A partition's clock never goes back (lua/_prelude.lua clock()): raising its stored clock past the present
makes a script stamp its transactions with exactly that time. So the workload walks a clock through the
months and raises the partitions of each operation's users to it before running the operation.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from datetime import datetime

from billing.core.timefmt import datetime_to_ms
from billing.ledger.outcomes import Applied
from billing.ledger.scripts import Ledger
from tests.support.workload import run


async def set_clock(ledger: Ledger, user_ids: list[int], ms: int) -> None:
    """The next transactions of these users' partitions are stamped `ms` (never lower than what they hold)."""
    pipe = ledger.redis.pipeline(transaction=False)
    for partition in {ledger.keys.partition_of(user_id) for user_id in user_ids}:
        pipe.hset(ledger.keys.meta(partition), "clock", ms)
    await pipe.execute()


@dataclass
class MonthsWorkload:
    """What a workload did: operations applied, and reservations left open at its end."""

    applied: int = 0
    open_orders: list[tuple[int, int, int, int]] = field(default_factory=list)  # user, service, order, amount


async def months_workload(
    ledger: Ledger, rng: random.Random, start: datetime, end: datetime, operations: int, users: int
) -> MonthsWorkload:
    """Deposits, withdrawals, transfers, reservations, partial and full recognitions, cancels and partial
    refunds of `users` users, at times evenly spread over [start, end). Reservations stay open for a random
    while, so many are recognized or cancelled in a later month than the one they were made in, and refunds
    come any time after their charge, often in a later month."""
    first, last = datetime_to_ms(start), datetime_to_ms(end)
    result = MonthsWorkload()
    next_order = 1
    charged: list[tuple[int, int, int, int]] = []  # user, service, order, charge (some refused: over the reservation)
    for step in range(operations):
        now = first + (last - first) * step // operations
        uid = rng.randint(1, users)
        kind = rng.choices(["deposit", "withdraw", "transfer", "reserve", "settle", "refund"], [3, 1, 1, 3, 3, 1])[0]
        involved = [uid]
        reserving: tuple[int, int, int, int] | None = None
        if kind == "deposit" or step < users:
            call = ledger.deposit_call(uid, rng.randint(100, 500_000), rng.choice([None, "top-up", "=1+1", "a;b"]))
        elif kind == "withdraw":
            call = ledger.withdraw_call(uid, rng.randint(1, 50_000), None)
        elif kind == "transfer":
            other = rng.choice([u for u in range(1, users + 1) if u != uid])
            involved.append(other)
            call = ledger.transfer_call(uid, other, rng.randint(1, 50_000), "gift")
        elif kind == "refund" and charged:
            u, s, o, charge = rng.choice(charged)
            involved = [u]
            call = ledger.refund_call(u, s, o, rng.randint(1, max(1, charge // 2)), rng.choice([None, "=refund"]))
        elif kind == "reserve" or not result.open_orders:
            sid, amount = rng.randint(1, 5), rng.randint(1, 80_000)
            call = ledger.reserve_call(uid, sid, next_order, amount, f"Service {sid}", None)
            reserving = (uid, sid, next_order, amount)
            next_order += 1
        else:
            # an older reservation more often than a recent one: they cross month boundaries
            index = min(rng.randrange(len(result.open_orders)) for _ in range(2))
            u, s, o, held = result.open_orders.pop(index)
            involved = [u]
            if rng.random() < 0.7:
                charge = rng.choice([held, rng.randint(1, held)])
                call = ledger.recognize_call(u, s, o, charge)
                charged.append((u, s, o, charge))
            else:
                call = ledger.cancel_call(u, s, o, "changed my mind")
        await set_clock(ledger, involved, now)
        outcome = await run(ledger, call)
        if isinstance(outcome, Applied):
            result.applied += 1
            if reserving is not None:
                result.open_orders.append(reserving)
    return result
