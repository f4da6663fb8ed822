"""GET /v1/users/{user_id}/transactions: a user's history for support (the read side does the work)."""

from __future__ import annotations

from billing.api.handlers.base import BaseHandler
from billing.core.errors import ApiError


class TransactionsHandler(BaseHandler):
    async def get(self, raw_user_id: str) -> None:
        user_id = self.path_id(raw_user_id, "user_id")
        query: dict[str, str] = {}
        for name, values in self.request.query_arguments.items():
            if len(values) != 1:
                raise ApiError(
                    "validation_error", f"{name} is given more than once", [{"field": name, "message": "give it once"}]
                )
            query[name] = values[0].decode("utf-8", "replace")
        self.write_json(200, await self.ctx.history.page(user_id, query, self.lang))
