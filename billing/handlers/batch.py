"""POST /v1/batch: many money operations in one request, each atomic, idempotent and authorized alone."""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from billing.auth import ROLES
from billing.errors import ApiError, validation_errors
from billing.handlers.base import BaseHandler, visible_ascii
from billing.ledger import Idempotency
from billing.operations import OPERATIONS, OperationSpec, Reply, validate
from billing.schemas import BatchRequest

BATCH_BODY_LIMIT = 1024 * 1024


class BatchHandler(BaseHandler):
    roles = ROLES
    body_limit = BATCH_BODY_LIMIT
    route_name = "/v1/batch"

    async def post(self) -> None:
        self.idempotency()  # every POST refuses a malformed Idempotency-Key; a batch's keys are per operation
        operations = _operations(self.json_body())
        results: list[Reply | None] = [None] * len(operations)
        runnable: list[tuple[int, OperationSpec, Any, Idempotency | None]] = []
        for index, raw in enumerate(operations):
            try:
                spec, request, idem = self._prepare_operation(raw)
            except ApiError as exc:
                results[index] = Reply(exc.status, exc.to_problem())
            else:
                runnable.append((index, spec, request, idem))
        replies = await self.ctx.operations.execute_many([item[1:] for item in runnable], self.lang)
        for (index, *_), reply in zip(runnable, replies, strict=True):
            results[index] = reply
        self.write_json(200, {"results": [_result(reply) for reply in results if reply is not None]})

    def _prepare_operation(self, raw: dict[str, Any]) -> tuple[OperationSpec, Any, Idempotency | None]:
        fields = dict(raw)
        name = fields.pop("op", None)
        spec = OPERATIONS.get(name) if isinstance(name, str) else None
        if spec is None:
            raise ApiError(
                "validation_error",
                f"op must be one of: {', '.join(OPERATIONS)}",
                [{"field": "op", "message": f"must be one of: {', '.join(OPERATIONS)}"}],
            )
        assert self.principal is not None
        if not self.principal.has_any(spec.roles):
            raise ApiError("forbidden", f"{name} needs one of the roles: {', '.join(sorted(spec.roles))}")
        key = fields.pop("idempotency_key", None)
        idem = None
        if key is not None:
            if not isinstance(key, str) or not visible_ascii(key, 255):
                raise ApiError(
                    "validation_error",
                    "idempotency_key must be 1-255 visible ASCII characters",
                    [{"field": "idempotency_key", "message": "1-255 visible ASCII characters"}],
                )
            idem = Idempotency(scope=self.principal.name, key=key)
        return spec, validate(spec, fields), idem


def _operations(data: dict[str, Any]) -> list[dict[str, Any]]:
    """The envelope's operations. A well-formed envelope (what BatchRequest accepts unchanged) skips pydantic,
    which would copy every operation; anything else goes through it for the same 400 and field errors."""
    operations = data.get("operations")
    if (
        len(data) == 1
        and type(operations) is list
        and 1 <= len(operations) <= BatchRequest.MAX_OPERATIONS
        and all(type(item) is dict for item in operations)
    ):
        return operations
    try:
        return BatchRequest.model_validate(data).operations
    except ValidationError as exc:
        raise ApiError("validation_error", "Batch envelope is not valid", validation_errors(exc)) from None


def _result(reply: Reply) -> dict[str, Any]:
    body = reply.body
    if reply.replayed:
        return {"status": reply.status, "body": body, "replayed": True}
    return {"status": reply.status, "body": body}
