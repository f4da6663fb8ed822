"""Reads of the money state in Redis: one user's balance, many users' balances."""

from __future__ import annotations

from typing import Any

from billing.api.handlers.base import BaseHandler
from billing.api.handlers.reports import query_text
from billing.core.errors import ApiError
from billing.core.money import format_kopecks

MAX_BALANCE_IDS = 100  # user ids in one GET /v1/balances
NOT_FOUND = "account_not_found"  # an item's error for a user with no account


def balance_body(user_id: int, available: int, reserved: int) -> dict[str, Any]:
    return {"user_id": user_id, "available": format_kopecks(available), "reserved": format_kopecks(reserved)}


class BalanceHandler(BaseHandler):
    async def get(self, raw_user_id: str) -> None:
        user_id = self.path_id(raw_user_id, "user_id")
        if "at" in self.request.query_arguments:  # the balance at a moment, from the MongoDB ledger
            at = query_text(self.request.query_arguments, "at")
            self.write_json(200, (await self.ctx.accounting.balance_at(user_id, at)).body())
            return
        balance = await self.ctx.ledger.balance(user_id)
        if balance is None:
            raise ApiError("account_not_found", f"User {user_id} has no account yet")
        self.write_json(200, balance_body(user_id, *balance))


class BalancesHandler(BaseHandler):
    """Many balances in one request and one Redis round trip; an unknown account is an item, not a failure."""

    async def get(self) -> None:
        user_ids = self.query_ids("user_ids", MAX_BALANCE_IDS)
        balances = await self.ctx.ledger.balances(user_ids)
        items = [
            balance_body(user_id, *balance) if balance is not None else {"user_id": user_id, "error": NOT_FOUND}
            for user_id, balance in zip(user_ids, balances, strict=True)
        ]
        self.write_json(200, {"items": items})
