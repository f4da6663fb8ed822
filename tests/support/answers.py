"""Money operations through the service layer, answered as the API answers them (billing/api/outcomes.py)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from billing.api.outcomes import Answer, answer
from billing.ledger.scripts import Idempotency
from billing.ledger.service import MoneyOperations, OperationSpec


async def run_one(
    operations: MoneyOperations, spec: OperationSpec, request: Any, idem: Idempotency | None, lang: str = "en"
) -> Answer:
    return answer(spec.name, await operations.execute(spec, request, idem, lang), lang)


async def run_many(
    operations: MoneyOperations, items: Sequence[tuple[OperationSpec, Any, Idempotency | None]], lang: str = "en"
) -> list[Answer]:
    results = await operations.execute_many(items, lang)
    return [answer(spec.name, result, lang) for (spec, _, _), result in zip(items, results, strict=True)]
