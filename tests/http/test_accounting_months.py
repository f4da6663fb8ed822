"""Statements over a generated ledger of several months: each month's opening plus its movements is its
closing and the next month's opening, and all users' charges minus refunds of a month are the revenue report's
total."""

from __future__ import annotations

import random
from datetime import UTC, datetime
from typing import Any

import pytest

from billing.bootstrap import Context
from billing.views.accounting import movement, revenue_kopecks
from tests.support.api import Api
from tests.support.months import months_workload

MONTHS = ("2031-01", "2031-02", "2031-03", "2031-04")
START = datetime(2030, 12, 31, 21, tzinfo=UTC)  # 2031-01-01 00:00 in Moscow
END = datetime(2031, 4, 30, 21, tzinfo=UTC)
# SecantusDB: >= 10,000 transactions of 100 users; mongomock scans the collection for every query, so less.
SIZES = {"secantus": (9_000, 100), "mongomock": (1_200, 20)}

pytestmark = [
    pytest.mark.parametrize("mongo_backend", ["mongomock", "secantus"], indirect=True),
    pytest.mark.parametrize("redis_backend", ["redis"], indirect=True),
]


def kop(text: str) -> int:
    negative = text.startswith("-")
    rubles, kopecks = text.lstrip("-").split(".")
    value = int(rubles) * 100 + int(kopecks)
    return -value if negative else value


async def test_statements_chain_and_add_up_to_the_revenue_report(api: Api, ctx: Context, mongo_backend: str) -> None:
    operations, users = SIZES[mongo_backend]
    done = await months_workload(ctx.ledger, random.Random(11), START, END, operations, users)
    # Reservations left open past their deadline by the partitions' clocks (now at the workload's end) are
    # released by the sweeper at any moment, between the statements and the balance read too: release them
    # all first, so that the statements read a ledger at rest.
    sweeper = ctx.reservation_sweeper
    assert sweeper is not None
    await sweeper.stop()
    while await sweeper.run_once():
        pass
    await ctx.projector.drain(timeout=120)
    stored = await ctx.mongo["transactions"].count_documents({})
    if mongo_backend == "secantus":
        assert stored >= 10_000 and done.applied > 0
    crossing = 0
    revenue = dict.fromkeys(MONTHS, 0)
    refunded = dict.fromkeys(MONTHS, 0)
    for user_id in range(1, users + 1):
        previous: dict[str, Any] = {"available": "0.00", "reserved": "0.00"}
        for month in MONTHS:
            answer = await api.get(f"/v1/users/{user_id}/statements/{month}", token="tok-accounting")
            assert answer.status == 200, answer.body
            body = answer.json
            assert body["opening"] == previous, (user_id, month)
            totals = {t: kop(v) for t, v in body["totals"].items()}
            available, reserved = movement(totals)
            assert kop(body["opening"]["available"]) + available == kop(body["closing"]["available"])
            assert kop(body["opening"]["reserved"]) + reserved == kop(body["closing"]["reserved"])
            crossing += month != MONTHS[0] and kop(body["opening"]["reserved"]) > 0
            revenue[month] += revenue_kopecks(totals)
            refunded[month] += totals["refund"]
            previous = body["closing"]
        available_now, reserved_now = await ctx.ledger.balance(user_id) or (0, 0)
        assert (kop(previous["available"]), kop(previous["reserved"])) == (available_now, reserved_now)
    assert crossing > 0  # money reserved in one month and settled in a later one
    assert all(refunded[month] > 0 for month in MONTHS[1:]), refunded  # the report nets them
    for month in MONTHS:
        report = sum(total for _, total in await ctx.reports.totals(month))
        assert revenue[month] == report > 0, month
