"""Links each projected transaction into its user's hash chain (billing/core/chain.py) before it is inserted.

The projector that computes a link must know the user's previous transaction, so a partition is projected by
one projector at a time, in stream order, which is id order (billing/projection/leases.py): when a batch is
linked, every earlier transaction of its partition is in MongoDB already (inserted by an earlier batch, which
was acknowledged only after MongoDB confirmed it) or earlier in the same batch. The chain heads of the users
this projector linked last are kept in memory, so a batch reads MongoDB only for users it has not seen since
it took its partitions; a replayed batch (its insert or its XACK failed, or a projector took the partition
over) gets the links it got before, since its users' previous transactions are the same.
"""

from __future__ import annotations

import asyncio
from typing import Any

from billing.core.chain import GENESIS, chain_hash
from billing.projection.store import HASH, LedgerStore

# Users whose chain head is kept in memory: the oldest is dropped beyond this (about 200 bytes each).
HEADS_KEPT = 100_000
# Users whose previous transaction is read from MongoDB at once.
LOOKUPS_AT_ONCE = 16

Head = tuple[int, str]  # (transaction id, its hash)


class Chainer:
    """Sets `hash` on ledger documents about to be inserted; one per projector."""

    def __init__(self, store: LedgerStore, kept: int = HEADS_KEPT) -> None:
        self.store = store
        self.kept = kept
        self._heads: dict[int, Head] = {}  # user -> the last link this projector inserted; oldest first
        self.lookups = 0  # previous transactions read from MongoDB (for tests and metrics)

    def forget(self) -> None:
        """Drop every head kept: partitions changed hands, so another projector may have extended the chains."""
        self._heads.clear()

    async def link(self, docs: list[dict[str, Any]]) -> dict[int, Head]:
        """Set each document's hash, each user's in id order; the users' new heads, for advance() once MongoDB
        has confirmed the batch."""
        by_user: dict[int, list[dict[str, Any]]] = {}
        for doc in docs:
            by_user.setdefault(int(doc["user_id"]), []).append(doc)
        unknown: dict[int, list[dict[str, Any]]] = {}
        for user_id, own in by_user.items():
            own.sort(key=lambda d: int(d["_id"]))
            kept = self._heads.get(user_id)
            if kept is None or kept[0] >= int(own[0]["_id"]):  # unknown, or a replay of what it linked already
                unknown[user_id] = own
        # (the batch's users, not every head kept: a batch names a few of the many users a projector keeps)
        previous = {user_id: head[1] for user_id in by_user if (head := self._heads.get(user_id)) is not None}
        previous.update(await self._look_up(unknown))
        heads: dict[int, Head] = {}
        for user_id, own in by_user.items():
            link = previous[user_id]
            for doc in own:
                link = doc[HASH] = chain_hash(link, doc)
            heads[user_id] = (int(own[-1]["_id"]), link)
        return heads

    def advance(self, heads: dict[int, Head]) -> None:
        """Keep the heads of a batch MongoDB confirmed (most recent last, the oldest dropped beyond `kept`)."""
        for user_id, head in heads.items():
            self._heads.pop(user_id, None)
            self._heads[user_id] = head
        while len(self._heads) > self.kept:
            del self._heads[next(iter(self._heads))]

    async def _look_up(self, unknown: dict[int, list[dict[str, Any]]]) -> dict[int, str]:
        """The hash before each user's first transaction here (GENESIS for a user's first ever); a replayed batch
        may have put the user's transactions here in MongoDB already, and they are skipped."""
        found: dict[int, str] = {}
        items = list(unknown.items())
        for start in range(0, len(items), LOOKUPS_AT_ONCE):
            chunk = items[start : start + LOOKUPS_AT_ONCE]
            answers = await asyncio.gather(
                *(
                    self.store.previous_link(user_id, own[0]["created_at"], int(own[0]["_id"]), later=len(own))
                    for user_id, own in chunk
                )
            )
            for (user_id, _own), (exists, link) in zip(chunk, answers, strict=True):
                # A previous transaction stored without a hash (projected before the chain existed) is chained
                # from as an empty link: `billing verify` names that transaction as the chain's break.
                found[user_id] = (link or "") if exists else GENESIS
            self.lookups += len(chunk)
        return found
