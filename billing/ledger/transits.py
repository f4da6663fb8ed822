"""Completes transfers between partitions left in transit: their request died between the debit and the
settlement (lua/transfer_debit.lua). Every worker runs the loop; `billing recover` runs it once.

A transfer's steps change nothing when repeated (lua/transfer_credit.lua and lua/transfer_settle.lua keep
markers), so any number of loops, requests and retries may complete one transfer at the same time: it is
credited and settled exactly once.
"""

from __future__ import annotations

import asyncio
import logging

from billing.infra.tasks import cancel_and_wait, start_loop
from billing.ledger.scripts import Ledger
from billing.ledger.unavailable import store_unavailable

log = logging.getLogger("billing.ledger.transits")

# A transit this old has lost its request (a live one completes it within milliseconds); the loop looks this
# often, so a transit is completed within about MIN_AGE + EVERY (+ the Redis round trips) of its debit.
MIN_AGE_MS = 1000
EVERY_SECONDS = 0.5


class TransitRecovery:
    """The loop completing transits older than min_age_ms, every `every` seconds."""

    def __init__(self, ledger: Ledger, every: float = EVERY_SECONDS, min_age_ms: int = MIN_AGE_MS) -> None:
        self.ledger = ledger
        self.every = every
        self.min_age_ms = min_age_ms
        self.completed = 0  # transits this process completed (for the log and tests)
        self._task: asyncio.Task[None] | None = None

    async def run_once(self, min_age_ms: int | None = None) -> int:
        """Complete every transit at least min_age_ms old (default: the loop's); how many there were."""
        age = self.min_age_ms if min_age_ms is None else min_age_ms
        transits = await self.ledger.open_transits(age)
        for transfer, record in transits:
            outcome = await self.ledger.complete_transit(transfer, record)
            log.warning(
                "completed transfer %s from user %s to user %s left in transit: %s",
                transfer["id"],
                transfer["from_user_id"],
                transfer["to_user_id"],
                type(outcome).__name__.lower(),
            )
        self.completed += len(transits)
        return len(transits)

    async def start(self) -> None:
        self._task = start_loop(self._run, "transfer recovery")

    async def stop(self) -> None:
        task, self._task = self._task, None
        await cancel_and_wait(task)

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.every)
            try:
                await self.run_once()
            except Exception as exc:  # the next round tries again
                if store_unavailable(exc):
                    log.warning("could not complete transfers in transit now: %r", exc)
                else:
                    log.exception("completing transfers in transit failed")
