"""/v1/reservations: POST reserves (an operation), GET looks one reservation up."""

from __future__ import annotations

from billing.api.handlers.operations import OperationHandler
from billing.core.errors import ApiError
from billing.views.render import render_reservation


class ReservationsHandler(OperationHandler):
    async def get(self) -> None:
        ids = {name: self.query_id(name) for name in ("user_id", "service_id", "order_id")}
        reservation = await self.ctx.ledger.reservation(ids["user_id"], ids["service_id"], ids["order_id"])
        if reservation is None:
            raise ApiError("reservation_not_found", "No reservation for this user, service and order")
        self.write_json(200, render_reservation(reservation))
