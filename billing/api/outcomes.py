"""Ledger outcomes as HTTP answers: the one place where what the ledger decided becomes a status and a body.

A refusal answers its code's problem (billing.core.errors.PROBLEMS: the one table of codes, statuses and
titles); a success answers its operation's status (APPLIED_STATUS) with the script's record rendered
(billing/views/render.py) in the language of the first answer, so a replay answers the same bytes.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from billing.core.errors import problem_body
from billing.ledger.outcomes import Applied, BatchResult, KeyReused, Refused, Unchanged
from billing.views.render import render_outcome_body

# An applied operation: 201 where it records a new movement or reservation, 200 where it changes a
# reservation or the catalog. A repeat (Unchanged) answers 200.
APPLIED_STATUS: dict[str, int] = {
    "deposit": 201,
    "withdrawal": 201,
    "transfer": 201,
    "reserve": 201,
    "recognize": 200,
    "cancel": 200,
    "refund": 201,
    "set_service": 200,
}
UNCHANGED_STATUS = 200


class Answer(NamedTuple):
    """One operation's HTTP answer: status, JSON body, and whether it replays an earlier outcome. (A NamedTuple:
    a batch makes one per operation, and a frozen dataclass sets each field through object.__setattr__.)"""

    status: int
    body: dict[str, Any]
    replayed: bool = False


def answer(operation: str, result: BatchResult, lang: str) -> Answer:
    """The answer to what the ledger decided about operation (a name of APPLIED_STATUS)."""
    if isinstance(result, Applied):
        body = render_outcome_body(result.body, result.lang or lang)
        return Answer(APPLIED_STATUS[operation], body, result.replayed)
    if isinstance(result, Unchanged):
        return Answer(UNCHANGED_STATUS, render_outcome_body(result.body, result.lang or lang), result.replayed)
    if isinstance(result, Refused):
        return _problem(problem_body(result.code), result.replayed)
    if isinstance(result, KeyReused):
        return _problem(problem_body("idempotency_key_reused"))
    if result.retryable:
        return _problem(problem_body("unavailable", "The operation did not run; retry it"))
    return _problem(problem_body("internal_error", "The operation failed and changed nothing; it is logged"))


def _problem(body: dict[str, Any], replayed: bool = False) -> Answer:
    return Answer(body["status"], body, replayed)
