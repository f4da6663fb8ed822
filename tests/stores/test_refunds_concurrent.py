"""Many partial refunds of the same charges at once, against a real redis-server: however they interleave, the
refunds of a reservation never add up to more than its recognized amount, and money is conserved."""

from __future__ import annotations

import asyncio
import random
from collections import Counter, defaultdict

import pytest

from billing.bootstrap import Context
from billing.core.money import format_kopecks
from tests.support.api import Api, Response

pytestmark = pytest.mark.parametrize("redis_backend", ["redis"], indirect=True)

USERS = (1, 2, 3)
CHARGE = 100_00  # kopecks recognized of each reservation
ORDERS_PER_USER = 2
REFUNDS = 240  # requests in flight together, over the 6 reservations: about 40 each


def kop(text: str) -> int:
    rubles, kopecks = text.split(".")
    return int(rubles) * 100 + int(kopecks)


async def test_concurrent_partial_refunds_never_pass_the_charge(api: Api, ctx: Context) -> None:
    refs = []
    for user_id in USERS:
        assert (await api.deposit(user_id, format_kopecks(ORDERS_PER_USER * CHARGE))).status == 201
        for order_id in range(1, ORDERS_PER_USER + 1):
            ref = {"user_id": user_id, "service_id": 1, "order_id": order_id}
            amount = format_kopecks(CHARGE)
            assert (await api.post("/v1/reservations", {**ref, "amount": amount}, token="tok-orders")).status == 201
            r = await api.post("/v1/reservations/recognize", {**ref, "amount": amount}, token="tok-orders")
            assert r.status == 200, r.body
            refs.append(ref)
    rng = random.Random(5)
    # each about 2.5 % to 10 % of the charge: about 40 per reservation ask for about 2.5 times what it holds
    asked = [(rng.choice(refs), rng.randint(CHARGE // 40, CHARGE // 10)) for _ in range(REFUNDS)]

    async def send(ref: dict[str, int], amount: int, n: int) -> Response:
        body = {**ref, "amount": format_kopecks(amount)}
        # a third of them with a key, sent twice at once: the pair refunds once
        if n % 3 == 0:
            first, second = await asyncio.gather(
                api.post("/v1/refunds", body, token="tok-orders", key=f"r{n}"),
                api.post("/v1/refunds", body, token="tok-orders", key=f"r{n}"),
            )
            assert (first.status, first.json) == (second.status, second.json) or 409 in (first.status, second.status)
            return first if first.status != 409 or second.status == 409 else second
        return await api.post("/v1/refunds", body, token="tok-orders")

    answers = await asyncio.gather(*(send(ref, amount, n) for n, (ref, amount) in enumerate(asked)))
    codes = Counter(a.json.get("code", a.status) for a in answers)
    assert codes[201] > 0 and codes["refund_exceeds_charge"] > 0, codes
    assert set(codes) <= {201, "refund_exceeds_charge", "idempotency_key_in_use"}, codes

    granted: dict[tuple[int, int], int] = defaultdict(int)
    seen_ids: set[int] = set()
    for (ref, amount), answer in zip(asked, answers, strict=True):
        if answer.status == 201:
            granted[(ref["user_id"], ref["order_id"])] += amount
            txn_id = int(answer.json["transaction"]["id"])
            assert txn_id not in seen_ids
            seen_ids.add(txn_id)
            # each answer shows its own refund within the charge
            assert kop(answer.json["reservation"]["refunded_amount"]) <= CHARGE
    total = 0
    for ref in refs:
        stored = await ctx.ledger.reservation(ref["user_id"], ref["service_id"], ref["order_id"])
        assert stored is not None and stored["status"] == "recognized"
        refunded = int(stored.get("refunded_amount", 0))
        assert refunded == granted[(ref["user_id"], ref["order_id"])] <= CHARGE
        # so much was asked that each one is nearly used up: what is left is below the largest ask
        assert CHARGE - refunded < CHARGE // 10
        total += refunded
    # money: every account holds what its refunds gave back; the totals say the same
    for user_id in USERS:
        balance = await ctx.ledger.balance(user_id)
        mine = sum(v for (u, _), v in granted.items() if u == user_id)
        assert balance == (mine, 0)
    totals = await ctx.ledger.totals()
    assert totals["refunded"] == total
    held = [sum(await ctx.ledger.balance(user_id) or (0, 0)) for user_id in USERS]
    assert totals["deposited"] - totals["revenue"] + totals["refunded"] == sum(held)
