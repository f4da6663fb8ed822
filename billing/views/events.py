"""The event feed (GET /v1/events): every ledger transaction as a `transaction.created` event, for other services.

Where it reads: the `transactions` collection (the ledger in MongoDB, kept forever, so every event is retained
far beyond the promised 7 days), per ledger partition only ids up to that partition's projection watermark
(billing/projection/watermark.py). Below a watermark nothing can still land, so a position per partition
("every id of partition p up to here was delivered") is exact: following `next` yields each event once, however
late or out of order the projector writes, and a user's events (all of one partition, ids increasing) in order.

The cursor is that position: per partition the sequence number (id // MAX_PARTITIONS) of the last event
delivered, as unsigned LEB128 varints behind a version byte, base64url, signed with HMAC-SHA256 like the
history's cursors (`<payload>.<signature>`), so it cannot be edited and a cursor from another partition count
is refused.

Long polls wait on Redis pub/sub: the projector's watermark store PUBLISHes each advance on a channel named as
the watermark key, and one subscriber task per process (FeedWaker) wakes every waiting request; a request that
finds nothing re-reads only after a wake-up or its deadline, never on a timer.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import hashlib
import heapq
import hmac
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from bson.int64 import Int64
from redis.asyncio import Redis

from billing.core.config import MAX_PARTITIONS
from billing.core.errors import ApiError
from billing.core.parsing import INT64_MAX, ParseError, cursor_parts, small_number, whole_seconds
from billing.core.timefmt import datetime_to_ms
from billing.infra.redis_route import RedisClient
from billing.infra.tasks import cancel_and_wait, start_loop, wait_event
from billing.ledger.scripts import RedisKeys
from billing.projection.store import SERVICES, TRANSACTIONS
from billing.views.history import service_names
from billing.views.render import render_ledger_item

EVENT_TYPE = "transaction.created"
PARAMETERS = ("after", "limit", "wait")
DEFAULT_LIMIT = MAX_LIMIT = 100
MAX_WAIT = 30  # seconds a request may be held open
CURSOR_VERSION = 1
# The longest cursor accepted. Written as 4-byte UTF-8 characters, percent-encoded, it still fits Tornado's 64 KiB
# request head. A position takes 1 to 9 bytes (5 up to 2^35 transactions of a partition), so every cursor of up
# to 337 partitions fits (the default is 16), and of 600 up to 2^35 transactions each.
MAX_EVENT_CURSOR_LENGTH = 4096
_DOMAIN = b"billing:events-cursor:v1"
RECONNECT_SECONDS = 1.0
log = logging.getLogger("billing.views.events")


# ---- the cursor -----------------------------------------------------------------------------------------


def _b64encode(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def _b64decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _varints(values: list[int]) -> bytes:
    out = bytearray()
    for value in values:
        while True:
            byte, value = value & 0x7F, value >> 7
            out.append(byte | (0x80 if value else 0))
            if not value:
                break
    return bytes(out)


def _read_varints(raw: bytes) -> list[int]:
    """The values of a varint string; ValueError when one is cut short, over 9 bytes or not minimal."""
    values: list[int] = []
    value = shift = length = 0
    for byte in raw:
        value |= (byte & 0x7F) << shift
        shift += 7
        length += 1
        if length > 9 or (byte == 0 and length > 1):
            raise ValueError("bad varint")
        if not byte & 0x80:
            values.append(value)
            value = shift = length = 0
    if length:
        raise ValueError("truncated varint")
    return values


class EventCursor:
    """Encodes and checks feed positions: per partition, the sequence number of the last event delivered."""

    def __init__(self, secret: str, partitions: int) -> None:
        self._key = hmac.new(secret.encode("utf-8"), _DOMAIN, hashlib.sha256).digest()
        self.partitions = partitions

    def _sign(self, payload: bytes) -> bytes:
        return hmac.new(self._key, payload, hashlib.sha256).digest()

    def encode(self, seqs: list[int]) -> str:
        payload = _varints([CURSOR_VERSION, len(seqs), *seqs])
        return f"{_b64encode(payload)}.{_b64encode(self._sign(payload))}"

    def decode(self, token: str) -> list[int]:
        """The positions a cursor carries; ApiError invalid_cursor unless this service issued it for this ledger."""
        try:
            encoded_payload, encoded_signature = cursor_parts(token, MAX_EVENT_CURSOR_LENGTH)
            payload = _b64decode(encoded_payload)
            signature = _b64decode(encoded_signature)
        except (ParseError, ValueError, binascii.Error):
            raise ApiError("invalid_cursor", "The cursor is malformed; use next exactly as returned") from None
        if not hmac.compare_digest(signature, self._sign(payload)):
            raise ApiError("invalid_cursor", "The cursor was not issued by this service or was altered")
        try:
            version, count, *seqs = _read_varints(payload)
        except ValueError:
            raise ApiError("invalid_cursor", "The cursor is malformed") from None
        top = (INT64_MAX - MAX_PARTITIONS) // MAX_PARTITIONS
        if version != CURSOR_VERSION or count != len(seqs) or any(s > top for s in seqs):
            raise ApiError("invalid_cursor", "The cursor is malformed")
        if count != self.partitions:
            raise ApiError("invalid_cursor", "The cursor was made for another ledger layout; start without it")
        return seqs


# ---- waking long polls --------------------------------------------------------------------------------------


class FeedWaker:
    """One pub/sub subscription per process to the watermark channels; wakes every waiting request on an advance.

    Started by the first request that waits (it needs the running loop); close() ends it. While Redis is
    unreachable it resubscribes every RECONNECT_SECONDS and wakes the waiters (a re-read is harmless).
    """

    def __init__(self, redis: Redis, channels: list[str]) -> None:
        self._redis = redis
        self._channels = channels
        self._advanced = asyncio.Event()
        self._subscribed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.released = False

    def release(self) -> None:
        """At shutdown: wake every waiting request and let none wait from now on (they answer what they have)."""
        self.released = True
        self._wake()

    def _wake(self) -> None:
        advanced, self._advanced = self._advanced, asyncio.Event()
        advanced.set()

    async def subscribed(self, timeout: float) -> asyncio.Event:
        """An event set on the next advance, taken once the subscription is live (or after timeout without: then
        only the request's deadline ends its wait)."""
        if self._task is None:
            self._task = start_loop(self._listen, "events-waker")
        await wait_event(self._subscribed, timeout)
        return self._advanced

    async def _listen(self) -> None:
        while True:
            pubsub: Any = self._redis.pubsub()  # (its aclose() is untyped)
            try:
                await pubsub.subscribe(*self._channels)
                while True:
                    message = await pubsub.get_message(ignore_subscribe_messages=False, timeout=RECONNECT_SECONDS)
                    if message is None:
                        continue
                    if message["type"] == "subscribe" and message["data"] >= len(set(self._channels)):
                        self._subscribed.set()  # every channel: an advance on any of them now wakes
                    elif message["type"] == "message":
                        self._wake()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # Redis went away: wake the waiters and subscribe again
                log.warning("event feed subscription lost: %r", exc)
                self._subscribed.clear()
                self._wake()
                await asyncio.sleep(RECONNECT_SECONDS)
            finally:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()

    async def close(self) -> None:
        if self._task is not None:
            await cancel_and_wait(self._task)
            self._task = None
            self._subscribed.clear()


# ---- the feed ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FeedQuery:
    after: str | None = None
    limit: int = DEFAULT_LIMIT
    wait: int = 0


def parse_feed_query(query: Mapping[str, str]) -> FeedQuery:
    """Validate the raw query parameters; every problem found is reported in one 400 validation_error."""
    errors = [
        {"field": name, "message": f"unknown query parameter; allowed: {', '.join(PARAMETERS)}"}
        for name in sorted(set(query) - set(PARAMETERS))
    ]
    values: dict[str, int] = {}
    parsers: dict[str, Callable[[str], int]] = {
        "limit": lambda text: small_number(text, MAX_LIMIT),
        "wait": lambda text: whole_seconds(text, MAX_WAIT),
    }
    for name, parse in parsers.items():
        if name in query:
            try:
                values[name] = parse(query[name])
            except ParseError as exc:
                errors.append({"field": name, "message": str(exc)})
    if errors:
        raise ApiError("validation_error", "Query parameters are not valid", errors)
    return FeedQuery(query.get("after"), values.get("limit", DEFAULT_LIMIT), values.get("wait", 0))


def _seq_below(bound: int, partition: int) -> int:
    """The largest sequence number whose id (seq * MAX_PARTITIONS + partition) is at most bound (0: none)."""
    return max(0, (bound - partition) // MAX_PARTITIONS)


def render_event(doc: Mapping[str, Any], lang: str, names: Mapping[int, str]) -> dict[str, Any]:
    item = render_ledger_item(doc, lang, names)
    return {
        "id": item["id"],
        "type": EVENT_TYPE,
        "created_at": item["created_at"],
        "data": {**item, "user_id": int(doc["user_id"])},
    }


class EventFeed:
    """GET /v1/events: reads `transactions` by _id per partition, up to each partition's watermark."""

    def __init__(self, mongo: Any, redis: RedisClient, keys: RedisKeys, secret: str, subscriber: Redis) -> None:
        """subscriber: the client the waker subscribes with; under Redis Cluster a client of one node (a
        PUBLISH reaches the subscribers of every node), which close() closes."""
        self._transactions = mongo[TRANSACTIONS]
        self._services = mongo[SERVICES]
        self._redis = redis
        self._keys = keys
        self._cursors = EventCursor(secret, keys.partitions)
        self._subscriber = subscriber
        self.waker = FeedWaker(subscriber, [keys.projected(p) for p in keys.all()])

    async def close(self) -> None:
        await self.waker.close()
        if self._subscriber is not self._redis:
            await self._subscriber.aclose()

    async def page(self, query: Mapping[str, str], lang: str) -> dict[str, Any]:
        q = parse_feed_query(query)
        seqs = self._cursors.decode(q.after) if q.after is not None else [0] * self._keys.partitions
        loop = asyncio.get_running_loop()
        deadline = loop.time() + q.wait
        # Subscribed before the first read: an advance after that read sets `advanced`.
        advanced = None
        if q.wait and not self.waker.released:
            advanced = await self.waker.subscribed(min(q.wait, RECONNECT_SECONDS))
        while True:
            docs, read_to = await self.read(seqs, q.limit)
            moved, seqs = read_to != seqs, read_to
            if docs:
                break
            if moved:  # only ids that never got a transaction were passed: read on, something may follow
                continue
            remaining = deadline - loop.time()
            if advanced is None or remaining <= 0 or self.waker.released:
                break
            await wait_event(advanced, remaining)
            advanced = await self.waker.subscribed(0)
        return {"items": await self.render(docs, lang), "next": self._cursors.encode(seqs)}

    # The reading below is also the webhooks' (billing/webhooks/dispatcher.py): a webhook's position is a feed
    # position, kept as the list of per-partition sequence numbers a cursor carries.

    def cursor(self, seqs: list[int]) -> str:
        """The signed cursor of a position (what `next` would be there)."""
        return self._cursors.encode(seqs)

    async def render(self, docs: list[dict[str, Any]], lang: str) -> list[dict[str, Any]]:
        """Ledger documents as events, in their order."""
        names = await service_names(self._services, docs)
        return [render_event(doc, lang, names) for doc in docs]

    async def documents(self, ids: list[int]) -> list[dict[str, Any]]:
        """The ledger documents of these transaction ids, in the order given (every id below a watermark has one;
        an id without one is left out)."""
        found = await self._transactions.find({"_id": {"$in": [Int64(i) for i in ids]}}).to_list(len(ids))
        by_id = {int(doc["_id"]): doc for doc in found}
        return [by_id[i] for i in ids if i in by_id]

    async def heads(self) -> list[int]:
        """Per partition, the last sequence number issued: the position before every transaction not yet made."""
        pipe = self._redis.pipeline(transaction=False)
        for p in self._keys.all():
            pipe.hget(self._keys.meta(p), "seq")
        return [int(v) if v is not None else 0 for v in await pipe.execute()]

    async def readable(self) -> list[int]:
        """Per partition, the last sequence number the feed may deliver now (below its watermark)."""
        return [_seq_below(mark, p) for p, mark in enumerate(await self.watermarks())]

    async def watermarks(self) -> list[int]:
        """Each partition's watermark; 0 where none is published yet (then nothing of it is delivered)."""
        pipe = self._redis.pipeline(transaction=False)
        for p in self._keys.all():
            pipe.get(self._keys.projected(p))
        return [int(v) if v is not None else 0 for v in await pipe.execute()]

    async def read(self, seqs: list[int], limit: int) -> tuple[list[dict[str, Any]], list[int]]:
        """Up to `limit` events (ledger documents) after the positions, merged by (created_at, id); the positions
        after them."""
        marks = await self.readable()
        news = [p for p in self._keys.all() if marks[p] > seqs[p]]
        # Per partition with news, its share of the page: the next sequence numbers up to its watermark's. A page
        # may so hold fewer than `limit` events while more wait; lookups stay about `limit` (each id is a probe).
        share = -(-limit // len(news)) if news else 0
        probes = {p: (seqs[p], min(marks[p], seqs[p] + share)) for p in news}
        found = await asyncio.gather(*(self._partition(p, low, high) for p, (low, high) in probes.items()))
        merged = heapq.merge(*found, key=lambda doc: (datetime_to_ms(doc["created_at"]), int(doc["_id"])))
        docs = [doc for doc, _ in zip(merged, range(limit), strict=False)]
        new = list(seqs)
        taken: dict[int, int] = {}
        for doc in docs:
            p = int(doc["_id"]) % MAX_PARTITIONS
            taken[p] = taken.get(p, 0) + 1
            new[p] = int(doc["_id"]) // MAX_PARTITIONS
        for (p, (_low, high)), rows in zip(probes.items(), found, strict=True):
            if taken.get(p, 0) == len(rows):
                # Every id of p up to `high` was looked up and delivered (sequence numbers without a transaction
                # below the watermark never get one): the next read starts beyond them.
                new[p] = high
        return docs, new

    async def _partition(self, p: int, low: int, high: int) -> list[dict[str, Any]]:
        """Partition p's transactions with sequence numbers in (low, high], in id order: point reads on _id."""
        ids = [Int64(seq * MAX_PARTITIONS + p) for seq in range(low + 1, high + 1)]
        found: list[dict[str, Any]] = await self._transactions.find(
            {"_id": {"$in": ids}}, sort=[("_id", 1)], limit=len(ids)
        ).to_list(len(ids))
        return found
