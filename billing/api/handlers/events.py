"""GET /v1/events: the ledger's transactions as events for other services (the read side does the work)."""

from __future__ import annotations

from billing.api.handlers.base import BaseHandler
from billing.core.parsing import ParseError, field_error, query_value


class EventsHandler(BaseHandler):
    async def get(self) -> None:
        query: dict[str, str] = {}
        for name in self.request.query_arguments:
            try:
                query[name] = query_value(self.request.query_arguments, name) or ""
            except ParseError as exc:
                raise field_error(name, exc) from None
        self.write_json(200, await self.ctx.events.page(query, self.lang))
