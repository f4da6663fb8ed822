"""Ledger.user_reservations: one user's reservations by SCAN, on fakeredis and a real redis-server."""

from __future__ import annotations

from billing.bootstrap import Context
from tests.support.api import Api


async def test_lists_only_this_users_reservations_by_status(api: Api, ctx: Context) -> None:
    for user in (5, 55):
        await api.deposit(user, "100.00")
        for order in (1, 2, 3):
            body = {"user_id": user, "service_id": 9, "order_id": order, "amount": f"{order}.00"}
            assert (await api.post("/v1/reservations", body, token="tok-orders")).status == 201
    await api.post("/v1/reservations/cancel", {"user_id": 5, "service_id": 9, "order_id": 2}, token="tok-orders")
    body = {"user_id": 5, "service_id": 9, "order_id": 3, "amount": "1.00"}
    await api.post("/v1/reservations/recognize", body, token="tok-orders")

    everything = await ctx.ledger.user_reservations(5)
    assert sorted((r["order_id"], r["status"]) for r in everything) == [
        ("1", "reserved"),
        ("2", "cancelled"),
        ("3", "recognized"),
    ]
    assert all(r["user_id"] == "5" for r in everything)
    open_ = await ctx.ledger.user_reservations(5, status="reserved")
    assert [(r["order_id"], r["amount"]) for r in open_] == [("1", "100")]
    assert len(await ctx.ledger.user_reservations(55, status="reserved")) == 3
    assert await ctx.ledger.user_reservations(555) == []
    assert len(await ctx.ledger.user_reservations(55, limit=2)) == 2
