"""A batch's script runs refused with NOSCRIPT are resent only when no later run of the batch ran."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from redis.exceptions import NoScriptError

from billing.ledger.service import MoneyOperations


class FakeLedger:
    """Sends each pipeline of batch commands to `answer`, which answers it."""

    def __init__(self, answer: Callable[[list[Any]], list[Any]]) -> None:
        self.loads = 0
        self.answer = answer

    def batch_command(self, chunk: Any) -> Any:
        return chunk

    async def send_batches(self, commands: list[Any]) -> list[Any]:
        return self.answer(commands)

    async def load_scripts(self) -> None:
        self.loads += 1


@pytest.mark.parametrize(
    ("first", "resent", "expected"),
    [
        # chunk 0 refused but chunk 1 ran: chunk 0 must not run after it; it stays NOSCRIPT (answered 503)
        (["noscript", "ran-1", "noscript"], ["again-2"], ["noscript", "ran-1", "again-2"]),
        # every run refused: all are resent, in order
        (["noscript", "noscript"], ["again-0", "again-1"], ["again-0", "again-1"]),
        (["ran-0", "ran-1"], None, ["ran-0", "ran-1"]),
    ],
)
async def test_noscript_runs_are_resent_only_as_a_suffix(first, resent, expected) -> None:
    sent: list[list[Any]] = []
    answers = [first, resent]

    def pipeline(commands: list[Any]) -> list[Any]:
        sent.append(commands)
        batch = answers[len(sent) - 1]
        return [NoScriptError("NOSCRIPT") if a == "noscript" else a for a in batch]

    ledger = FakeLedger(pipeline)
    results = await MoneyOperations(ledger)._pipeline([[i] for i in range(len(first))])  # type: ignore[arg-type]
    shown = ["noscript" if isinstance(r, NoScriptError) else r for r in results]
    assert shown == expected
    if resent is None:
        assert len(sent) == 1 and ledger.loads == 0
    else:
        assert sent[1] == [[i] for i in range(len(first) - len(resent), len(first))]
