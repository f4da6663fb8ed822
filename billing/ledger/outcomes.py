"""What the ledger decided about one operation, in the ledger's terms: no HTTP status, no rendered body.

A script records its outcome (lua/_prelude.lua) as {"result": "applied" | "unchanged", "body": {...}} or
{"result": "refused", "code": "<code>"}, with the language of the first answer; the API turns an outcome
into its answer (billing/api/outcomes.py), the same way each time, so a replay answers the first bytes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson


@dataclass(frozen=True, slots=True)
class Applied:
    """The operation changed the ledger; body is the script's record of it (ids and money as strings)."""

    body: dict[str, Any]
    replayed: bool = False
    lang: str | None = None  # the language of the first answer, kept with the idempotency record


@dataclass(frozen=True, slots=True)
class Unchanged:
    """The ledger already held what the operation asks (the same reserve, recognize or cancel again)."""

    body: dict[str, Any]
    replayed: bool = False
    lang: str | None = None


@dataclass(frozen=True, slots=True)
class Refused:
    """A business refusal, recorded like any outcome; code is one of billing.core.errors.PROBLEMS."""

    code: str
    replayed: bool = False


# What a script decided: the operation reached the money (now, or when it first ran under its key).
Outcome = Applied | Unchanged | Refused


@dataclass(frozen=True, slots=True)
class KeyReused:
    """A batch operation whose Idempotency-Key was used before with another request: nothing ran."""


@dataclass(frozen=True, slots=True)
class NotRun:
    """A batch operation that got no outcome and changed nothing (lua/_batch.lua). retryable: it did not run,
    or Redis refused its writes for now; otherwise the ledger failed it, and it is logged."""

    retryable: bool


# What one operation of a batch came to.
BatchResult = Outcome | KeyReused | NotRun


@dataclass(frozen=True, slots=True)
class InTransit:
    """A transfer between partitions whose debit is done and whose credit and settlement are not yet
    (lua/transfer_debit.lua): the ledger completes it (Ledger.complete_transfer) into its final Outcome.
    transfer: its id, users, amount, comment and partitions, as the script recorded them."""

    transfer: dict[str, Any]
    replayed: bool = False


def script_result(payload: bytes | str, replayed: bool) -> Outcome | InTransit:
    """What a script returned or replayed: an outcome, or a transfer still in transit."""
    record = orjson.loads(payload)
    if record.get("result") == "pending":
        return InTransit(record["transfer"], replayed)
    return _outcome(record, replayed)


def outcome_from_record(payload: bytes | str, replayed: bool) -> Outcome:
    """The outcome a script returned or replayed (the JSON after the fingerprint of an idempotency record)."""
    return _outcome(orjson.loads(payload), replayed)


def _outcome(record: dict[str, Any], replayed: bool) -> Outcome:
    result = record.get("result")
    if result == "refused":
        return Refused(record["code"], replayed)
    if result == "applied":
        return Applied(record["body"], replayed, record.get("lang"))
    if result == "unchanged":
        return Unchanged(record["body"], replayed, record.get("lang"))
    raise ValueError(f"not a ledger outcome: {result!r}")
