"""The services catalog: names shown in history and in the revenue report."""

from __future__ import annotations

from pydantic import ValidationError

from billing.api.handlers.base import BaseHandler
from billing.api.outcomes import answer
from billing.core.errors import ApiError, validation_errors
from billing.core.schemas import ServiceNameRequest


class ServiceHandler(BaseHandler):
    async def put(self, raw_service_id: str) -> None:
        service_id = self.path_id(raw_service_id, "service_id")
        try:
            request = ServiceNameRequest.model_validate(self.json_body())
        except ValidationError as exc:
            raise ApiError("validation_error", "Request is not valid", validation_errors(exc)) from None
        outcome = await self.ctx.ledger.set_service(service_id, request.name)
        reply = answer("set_service", outcome, self.lang)
        self.write_json(reply.status, reply.body)


class ServicesHandler(BaseHandler):
    async def get(self) -> None:
        names = await self.ctx.ledger.services()
        items = [{"service_id": sid, "name": name} for sid, name in sorted(names.items())]
        self.write_json(200, {"items": items})
