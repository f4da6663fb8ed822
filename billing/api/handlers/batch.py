"""POST /v1/batch: many money operations in one request, each atomic, idempotent and authorized alone."""

from __future__ import annotations

import contextlib
from typing import Any

import orjson
from pydantic import ValidationError

from billing.api.handlers.base import UNAVAILABLE_ERRORS, BaseHandler
from billing.api.outcomes import Answer, answer
from billing.core.errors import ApiError, validation_errors
from billing.core.parsing import visible_ascii
from billing.core.schemas import BatchRequest
from billing.ledger.scripts import (
    BatchClaim,
    Idempotency,
    IdempotencyKeyInUse,
    IdempotencyKeyReused,
    Ledger,
    batch_operation_key,
    fingerprint,
)
from billing.ledger.service import OPERATIONS, OperationSpec, reached_money, validate

BATCH_BODY_LIMIT = 1024 * 1024


class BatchHandler(BaseHandler):
    body_limit = BATCH_BODY_LIMIT
    operation_roles: dict[str, frozenset[str]]  # who may run each operation (the route table)

    async def post(self) -> None:
        batch_key = self.idempotency()
        operations = _operations(self.json_body())
        results: list[Answer | None] = [None] * len(operations)
        runnable: list[tuple[int, OperationSpec, Any, Idempotency | None]] = []
        derived: set[int] = set()  # operations keyed by the batch's Idempotency-Key
        permitted: dict[str, bool] = {}  # whether the caller may run an operation, asked once per name
        for index, raw in enumerate(operations):
            try:
                spec, request, idem = self._prepare_operation(raw, permitted)
            except ApiError as exc:
                results[index] = Answer(exc.status, exc.to_problem())
                continue
            if idem is None and batch_key is not None:
                idem = batch_operation_key(batch_key, index)
                derived.add(index)
            runnable.append((index, spec, request, idem))
        claim = None
        if batch_key is not None and runnable:
            fp = fingerprint("POST /v1/batch", _canonical(results, runnable, derived))
            try:
                claim = await self.ctx.ledger.claim_batch_key(batch_key, fp)
            except IdempotencyKeyReused:
                raise ApiError("idempotency_key_reused", "This Idempotency-Key was used with another batch") from None
            except IdempotencyKeyInUse:
                raise ApiError(
                    "idempotency_key_in_use",
                    "A batch with this Idempotency-Key is running",
                    headers={"Retry-After": "1"},
                ) from None
        lang = self.lang
        try:
            outcomes = await self.ctx.operations.execute_many([item[1:] for item in runnable], lang)
        except BaseException:
            if claim is not None:
                await _settle(self.ctx.ledger, claim, reached=False)
            raise
        for (index, spec, _request, _idem), outcome in zip(runnable, outcomes, strict=True):
            results[index] = answer(spec.name, outcome, lang)
        if claim is not None:
            await _settle(self.ctx.ledger, claim, any(reached_money(outcome) for outcome in outcomes))
        # A batch retried under its Idempotency-Key answers exactly as the first time, marked by the header.
        replayed = bool(derived) and all(results[i].replayed for i in derived)  # type: ignore[union-attr]
        body = [_result(reply, i not in derived) for i, reply in enumerate(results) if reply is not None]
        self.write_json(200, {"results": body}, replayed=replayed)

    def _prepare_operation(
        self, raw: dict[str, Any], permitted: dict[str, bool]
    ) -> tuple[OperationSpec, Any, Idempotency | None]:
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
        may = permitted.get(name)
        if may is None:
            may = permitted[name] = self.principal.has_any(self.operation_roles[name])
        if not may:
            allowed = self.operation_roles[name]
            raise ApiError("forbidden", f"{name} needs one of the roles: {', '.join(sorted(allowed))}")
        key = fields.pop("idempotency_key", None)
        idem = None
        if key is not None:
            if not isinstance(key, str) or not visible_ascii(key, 255):
                raise ApiError(
                    "validation_error",
                    "idempotency_key must be 1-255 visible ASCII characters",
                    [{"field": "idempotency_key", "message": "1-255 visible ASCII characters"}],
                )
            idem = Idempotency(self.principal.name, key)
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


def _canonical(
    refused: list[Answer | None], runnable: list[tuple[int, OperationSpec, Any, Idempotency | None]], derived: set[int]
) -> bytes:
    """The batch as bytes for its fingerprint: what each operation means, as a single request's fingerprint is
    its validated fields. A valid operation: its name, its own key, its validated fields (flat: see
    request_fingerprint); a refused one: its answer, which depends on nothing but the operation. So a batch
    written another way is the same batch, and nothing the client nests, however deep, is walked here."""
    parts: list[Any] = [[reply.status, reply.body] if reply is not None else None for reply in refused]
    for index, spec, request, idem in runnable:
        own_key = idem.key if idem is not None and index not in derived else None
        parts[index] = [spec.name, own_key, request.__dict__]
    return orjson.dumps(parts, option=orjson.OPT_SORT_KEYS)


async def _settle(ledger: Ledger, claim: BatchClaim, reached: bool) -> None:
    """Let go of the batch's key after its run. Some operation reached the money: the key now means this batch.
    None did (each refused before it, or the run failed with 503): nothing stays under the key, as for a whole
    request refused so. The answer stands either way: if Redis cannot be reached now, the claim runs out by
    itself, and each operation's own record still keeps a retry from applying it twice."""
    with contextlib.suppress(*UNAVAILABLE_ERRORS):
        if reached:
            await ledger.complete_batch_key(claim)
        else:
            await ledger.release_batch_key(claim)


def _result(reply: Answer, mark_replay: bool = True) -> dict[str, Any]:
    body = reply.body
    if reply.replayed and mark_replay:
        return {"status": reply.status, "body": body, "replayed": True}
    return {"status": reply.status, "body": body}
