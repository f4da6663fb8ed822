"""POST endpoints that move money: deposits, withdrawals, transfers, reserve, recognize, cancel, refund."""

from __future__ import annotations

from billing.api.handlers.base import BaseHandler
from billing.api.outcomes import answer
from billing.ledger.service import OperationSpec, validate


class OperationHandler(BaseHandler):
    """One money operation per route; the route table says which (billing/api/routes.py)."""

    @property
    def spec(self) -> OperationSpec:
        assert self.route is not None and self.route.operation is not None
        return self.route.operation

    async def post(self) -> None:
        idem = self.idempotency()
        request = validate(self.spec, self.json_body())
        outcome = await self.ctx.operations.execute(self.spec, request, idem, self.lang)
        reply = answer(self.spec.name, outcome, self.lang)
        self.write_json(reply.status, reply.body, reply.replayed)
