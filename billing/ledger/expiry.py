"""Releases reservations past their deadline: the sweeper every worker runs (lua/expire.lua).

Each partition keeps an expiry index (billing/ledger/scripts.py RedisKeys.expiry): its reserved reservations
by deadline. A sweep reads every partition's due members in one pipeline (lua/expiry_read.lua: due by the
partition's own clock, the one its scripts stamp transactions with), then runs lua/expire.lua for each of them
(up to `batch` per partition). The script checks the reservation's state itself,
so any number of sweepers (every worker of every instance) may race each other and recognize or cancel calls
on the same reservation: exactly one of them releases it, the others find it closed. A recognize or cancel at or
after the deadline releases it itself (409 reservation_expired), and reads show it expired
(billing/ledger/scripts.py reservation_as_of), so the sweeper's cadence bounds only when the money is back
in `available` and the release in history, not what any answer says.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable

from redis.exceptions import NoScriptError

from billing.core.config import default
from billing.core.errors import ApiError
from billing.infra.tasks import cancel_and_wait, start_loop
from billing.ledger.outcomes import Applied
from billing.ledger.scripts import BATCH_CHUNK, Ledger, decode_reply
from billing.ledger.unavailable import store_unavailable

log = logging.getLogger("billing.ledger.expiry")

EVERY_SECONDS: float = default("reservation_sweep_interval_ms") / 1000


class ReservationSweeper:
    """The loop releasing due reservations, about every `every` seconds (jittered, so that the workers' sweeps
    spread out), at most `batch` per partition per sweep (a sweep that found a full batch goes again at once)."""

    def __init__(self, ledger: Ledger, every: float = EVERY_SECONDS, batch: int = BATCH_CHUNK) -> None:
        self.ledger = ledger
        self.every = every
        self.batch = batch
        self.released = 0  # reservations this process released (for the log and tests)
        # Raises while money writes are refused (billing/projection/seq_guard.py): the sweep waits for the next
        # round, as money operations answer 503. None: never.
        self.write_gate: Callable[[], None] | None = None
        self._task: asyncio.Task[None] | None = None

    async def run_once(self) -> int:
        """One sweep of every partition: how many reservations it released (others may have released some of
        the due ones first)."""
        return (await self._sweep())[0]

    async def _sweep(self) -> tuple[int, bool]:
        """(released, whether to sweep again at once: some partition had a full batch due and some were released)."""
        if self.write_gate is not None:
            try:
                self.write_gate()
            except ApiError:
                return 0, False
        due = await self.ledger.due_reservations(self.batch)
        if not due:
            return 0, False
        commands = []
        for refs in due.values():
            for ref in refs:
                name, keys, args = self.ledger.expire_call(*ref)
                commands.append(self.ledger.script_call(name, None, "", keys, args))
        # One script run each, so that a reservation the script cannot read (a broken ledger: logged) holds up no
        # other; all in one pipeline (in a Redis Cluster, each node's at once).
        replies = await self.ledger.send_batches(commands)
        released = 0
        for reply in replies:
            if isinstance(reply, NoScriptError):
                await self.ledger.load_scripts()  # it did not run: the next sweep finds the reservation again
            elif isinstance(reply, Exception):
                if store_unavailable(reply):
                    raise reply
                log.error("could not release an expired reservation, it stays reserved: %s", reply)
            else:
                released += isinstance(decode_reply(reply), Applied)
        self.released += released
        return released, released > 0 and any(len(refs) >= self.batch for refs in due.values())

    async def start(self) -> None:
        self._task = start_loop(self._run, "reservation sweeper")

    async def stop(self) -> None:
        task, self._task = self._task, None
        await cancel_and_wait(task)

    async def _run(self) -> None:
        more = False
        while True:
            if not more:
                await asyncio.sleep(self.every * random.uniform(0.5, 1.5))
            try:
                _released, more = await self._sweep()
            except Exception as exc:  # the next round tries again
                more = False
                if store_unavailable(exc):
                    log.warning("could not release expired reservations now: %r", exc)
                else:
                    log.exception("releasing expired reservations failed")
