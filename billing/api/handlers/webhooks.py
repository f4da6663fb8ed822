"""Webhooks, for admins: PUT, GET and DELETE /v1/webhooks/{name}, GET /v1/webhooks (billing/webhooks/ does the work)."""

from __future__ import annotations

from pydantic import ValidationError

from billing.api.handlers.base import BaseHandler
from billing.core.errors import ApiError, validation_errors
from billing.core.schemas import WebhookRequest
from billing.webhooks.registry import check_name


class WebhookHandler(BaseHandler):
    async def put(self, name: str) -> None:
        errors = []
        try:
            check_name(name)
        except ApiError as exc:
            errors += exc.errors
        try:
            request = WebhookRequest.model_validate(self.json_body())
        except ValidationError as exc:
            errors += validation_errors(exc)
        if errors:  # every problem of the request at once
            raise ApiError("validation_error", "Request is not valid", errors)
        self.write_json(200, await self.ctx.webhooks.put(name, request))

    async def get(self, name: str) -> None:
        self.write_json(200, await self.ctx.webhooks.status(name))

    async def delete(self, name: str) -> None:
        await self.ctx.webhooks.delete(name)
        self.set_status(204)
        self.finish()


class WebhooksHandler(BaseHandler):
    async def get(self) -> None:
        self.write_json(200, await self.ctx.webhooks.listing())
