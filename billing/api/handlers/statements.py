"""A user's monthly statement (JSON, or CSV when Accept asks for text/csv); the read side does the work."""

from __future__ import annotations

from billing.api.handlers.base import BaseHandler
from billing.views.accounting import wants_csv


class StatementHandler(BaseHandler):
    async def get(self, raw_user_id: str, month: str) -> None:
        user_id = self.path_id(raw_user_id, "user_id")
        accounting = self.ctx.accounting
        if not wants_csv(self.request.headers.get("Accept")):
            self.write_json(200, (await accounting.statement(user_id, month)).body())
            return
        chunks = accounting.statement_csv(user_id, month)
        first = await anext(chunks)  # problems (month, account) surface here, before any header is sent
        label = accounting.month(month).label
        self.set_header("Content-Type", "text/csv; charset=utf-8")
        self.set_header("Content-Disposition", f'attachment; filename="statement-{user_id}-{label}.csv"')
        self.write(first)
        async for chunk in chunks:
            self.write(chunk)
        self.finish()
