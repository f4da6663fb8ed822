"""`billing verify`: re-compute every user's hash chain from the MongoDB ledger (billing/core/chain.py) and name
where a stored transaction no longer matches it; the Redis <-> ledger totals are reconcile's comparison
(billing/projection/recovery.py).

The ledger is read once, user by user, each user's transactions in id order, through one streaming cursor on
the user_created index: memory stays flat whatever the ledger's size. An edited transaction breaks its own link
(its content is not what was hashed); a deleted one breaks the link of the user's next transaction (which was
chained from the deleted one's hash), and a deleted last transaction shows in the Redis <-> ledger comparison.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from billing.core.chain import GENESIS, chain_hash
from billing.projection.recovery import Progress, ReconcileReport, no_progress
from billing.projection.store import HASH, LedgerStore

PROGRESS_EVERY = 10_000  # transactions between two progress reports
SHOWN_BREAKS = 20  # breaks listed in the summary; the count says how many more


@dataclass(frozen=True)
class ChainBreak:
    """The first transaction of a user's chain that does not hold: its stored hash against the re-computed one."""

    user_id: int
    transaction_id: int
    expected: str
    stored: str | None
    why: str = "stored hash differs"

    def __str__(self) -> str:
        return (
            f"user {self.user_id} transaction {self.transaction_id}: {self.why} "
            f"(expected {self.expected}, stored {self.stored or 'none'})"
        )


@dataclass
class VerifyReport:
    users: int = 0
    transactions: int = 0
    seconds: float = 0.0
    breaks: list[ChainBreak] = field(default_factory=list)  # the first of each user whose chain breaks
    totals: ReconcileReport | None = None  # None: not compared yet

    @property
    def ok(self) -> bool:
        return not self.breaks and (self.totals is None or self.totals.ok)

    @property
    def rate(self) -> float:
        return self.transactions / self.seconds if self.seconds > 0 else 0.0

    def summary(self) -> str:
        verdict = "OK" if not self.breaks else f"{len(self.breaks)} BROKEN CHAIN(S)"
        lines = [
            f"verify: {self.transactions} transactions of {self.users} users in {self.seconds:.1f} s "
            f"({self.rate:,.0f} transactions/s): {verdict}"
        ]
        lines += [f"  BREAK {chain_break}" for chain_break in self.breaks[:SHOWN_BREAKS]]
        if len(self.breaks) > SHOWN_BREAKS:
            lines.append(f"  ... and {len(self.breaks) - SHOWN_BREAKS} more users whose chain breaks")
        if self.totals is not None:
            lines.append(self.totals.summary())
            lines += [f"  MISMATCH {mismatch}" for mismatch in self.totals.mismatches]
        return "\n".join(lines)


async def verify_chains(
    store: LedgerStore,
    user_id: int | None = None,
    progress: Progress = no_progress,
    clock: Callable[[], float] = time.perf_counter,
) -> VerifyReport:
    """Re-compute the chains of every user (or one) and report the first break of each."""
    report = VerifyReport()
    started = clock()
    current: int | None = None
    link, last_id, broken = GENESIS, 0, False
    progress("verify the hash chains (transactions)", 0, None)
    async for doc in store.in_chain_order(user_id):
        owner, txn_id = int(doc["user_id"]), int(doc["_id"])
        report.transactions += 1
        if report.transactions % PROGRESS_EVERY == 0:
            progress("verify the hash chains (transactions)", report.transactions, None)
        if owner != current:
            current, link, last_id, broken = owner, GENESIS, 0, False
            report.users += 1
        if broken:
            continue  # a user's first break is named; what follows it cannot be checked against it
        expected = chain_hash(link, doc)
        stored = doc.get(HASH)
        if txn_id <= last_id:
            why = f"out of id order (after transaction {last_id}: its time was changed)"
            report.breaks.append(ChainBreak(owner, txn_id, expected, stored, why))
            broken = True
        elif stored != expected:
            why = (
                "no stored hash"
                if stored is None
                else "stored hash differs: this transaction was changed, or one before it deleted"
            )
            report.breaks.append(ChainBreak(owner, txn_id, expected, stored, why))
            broken = True
        link, last_id = expected, txn_id
    progress("verify the hash chains (transactions)", report.transactions, report.transactions)
    report.seconds = clock() - started
    return report
