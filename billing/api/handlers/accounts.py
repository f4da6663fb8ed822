"""Reads of the money state in Redis: a user's balance and one reservation."""

from __future__ import annotations

from billing.api.handlers.base import BaseHandler
from billing.core.errors import ApiError
from billing.core.money import format_kopecks


class BalanceHandler(BaseHandler):
    async def get(self, raw_user_id: str) -> None:
        user_id = self.path_id(raw_user_id, "user_id")
        balance = await self.ctx.ledger.balance(user_id)
        if balance is None:
            raise ApiError("account_not_found", f"User {user_id} has no account yet")
        available, reserved = balance
        self.write_json(
            200, {"user_id": user_id, "available": format_kopecks(available), "reserved": format_kopecks(reserved)}
        )
