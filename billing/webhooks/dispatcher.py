"""Delivers each webhook's events: the event feed read from the webhook's position, POSTed in batches of up to
100 in feed order, signed, retried with exponential backoff until a 2xx acknowledges the batch.

Every `billing serve` worker runs one WebhookDispatcher. A webhook is delivered by whichever dispatcher holds
its lease (RedisKeys.webhook_lease: SET NX PX with a random token, renewed every third of LEASE_MS and before
every POST, released at stop once the POST in flight is answered and its outcome stored), so one delivery per
webhook is in flight across all workers and instances.
A dispatcher that dies leaves its lease to run out; another takes the webhook over from the stored state.

A batch is written to Redis (its delivery id, its transaction ids in order, the position after it) before it
is first sent, and the position moves past it only once it is acknowledged. So a batch interrupted at any
point (a failed POST, a crash, a lost lease) is sent again with the same Billing-Delivery-Id and the same
events, and nothing after it goes first. Receivers see each batch at least once: they detect repeats by the
delivery id or by the events' ids.

A caught-up webhook waits for the feed's watermark PUBLISH (the feed's FeedWaker), never on a timer; a failed
one sleeps until its next attempt (through Clock, which tests replace to run the schedule without waiting).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import hmac
import logging
import math
import secrets
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any, Protocol

import orjson
from tornado.httpclient import AsyncHTTPClient, HTTPRequest

from billing.infra.tasks import cancel_and_wait, start_loop, wait_event
from billing.ledger.unavailable import store_unavailable
from billing.views.events import EventFeed
from billing.webhooks.addresses import GuardedResolver
from billing.webhooks.store import WebhookState, WebhookStore, encode_position

log = logging.getLogger("billing.webhooks")

BATCH_LIMIT = 100  # events per delivery
SEND_TIMEOUT_SECONDS = 5.0  # a 2xx must come within this
# How long a graceful stop waits for a webhook's step in flight (its feed reads, its POST, storing the outcome).
STOP_GRACE_SECONDS = SEND_TIMEOUT_SECONDS + 2.0
FIRST_DELAY_SECONDS = 1.0  # after the first failure of a batch; doubled after each further one
MAX_DELAY_SECONDS = 3600.0  # the longest wait between two attempts (reached after 13 failures, 1 h 8 min in)
LEASE_MS = 15_000
RENEW_FRACTION = 3  # leases are renewed (and free ones looked for) every LEASE_MS / RENEW_FRACTION
LANGUAGE = "ru"  # events' descriptions in deliveries
# Feed pages one step reads at most while a types filter drops every event it reads: the position is stored
# after them and the next step goes on, so a long stretch of filtered-out events never holds Redis or MongoDB.
SCAN_PAGES = 20
IDLE_SECONDS = 30.0  # a caught-up webhook looks again at least this often (a missed wake-up costs no more)
STORE_RETRY_SECONDS = 1.0  # after Redis or MongoDB failed a step
MAX_ERROR_TEXT = 300
SIGNATURE_HEADER = "Billing-Signature"


def backoff(attempts: int) -> float:
    """Seconds from the `attempts`-th failed attempt of a batch to the next: 1, 2, 4, … 2048, then 3600."""
    return min(MAX_DELAY_SECONDS, FIRST_DELAY_SECONDS * float(2 ** min(attempts - 1, 32)))


def sign(secret: str, timestamp: int, body: bytes) -> str:
    """The Billing-Signature value: t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<body>", keyed by the secret's
    UTF-8 bytes>."""
    digest = hmac.new(secret.encode("utf-8"), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={digest}"


class Clock:
    """Wall time and waiting; tests pass one whose sleep moves its time instead of waiting."""

    def now(self) -> float:
        return time.time()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


class Sender(Protocol):
    async def post(self, url: str, body: bytes, headers: Mapping[str, str]) -> str | None:
        """POST once: None when answered 2xx within the timeout, else what went wrong (one line)."""

    def close(self) -> None: ...


class HttpSender:
    """Deliveries over HTTP(S) with Tornado's client: SEND_TIMEOUT_SECONDS for all of it, no redirects followed,
    the answer's body read and dropped, and only public addresses connected to (unless allowed)."""

    def __init__(self, allow_private: bool, timeout: float = SEND_TIMEOUT_SECONDS, max_clients: int = 64) -> None:
        self.timeout = timeout
        self.client = AsyncHTTPClient(
            force_instance=True, max_clients=max_clients, resolver=GuardedResolver(allow_private=allow_private)
        )

    async def post(self, url: str, body: bytes, headers: Mapping[str, str]) -> str | None:
        request = HTTPRequest(
            url,
            method="POST",
            body=body,
            headers=dict(headers),
            connect_timeout=self.timeout,
            request_timeout=self.timeout,
            follow_redirects=False,
            streaming_callback=lambda _chunk: None,
        )
        try:
            # The client's own timeouts leave out the wait for a free connection slot: this bounds the whole
            # (a little later than the client's own, which then ends the usual slow answer itself).
            async with asyncio.timeout(self.timeout + 1):
                response = await self.client.fetch(request, raise_error=False)
        except TimeoutError:
            return f"no answer within {self.timeout:g} s"
        except Exception as exc:  # connection refused or reset, TLS, DNS, a refused address: all are a failure
            return f"{type(exc).__name__}: {exc}"[:MAX_ERROR_TEXT]
        if 200 <= response.code < 300:
            return None
        return f"HTTP {response.code}"

    def close(self) -> None:
        self.client.close()


class LeaseLost(Exception):
    """This dispatcher no longer delivers the webhook (another took it, or the webhook was deleted)."""


def _ms(seconds: float) -> int:
    return int(seconds * 1000)


class WebhookDispatcher:
    """One process's deliveries: takes the lease of every webhook no other dispatcher holds and delivers it."""

    def __init__(
        self,
        store: WebhookStore,
        feed: EventFeed,
        sender: Sender,
        clock: Clock | None = None,
        lease_ms: int = LEASE_MS,
    ) -> None:
        self.store = store
        self.feed = feed
        self.sender = sender
        self.clock = clock or Clock()
        self.lease_ms = lease_ms
        # Hooks for metrics (billing/bootstrap.py): (webhook, events acknowledged), (webhook) per failed attempt.
        self.on_delivered: Callable[[str, int], None] | None = None
        self.on_failure: Callable[[str], None] | None = None
        self.serving: dict[str, tuple[str, asyncio.Task[None]]] = {}  # webhook -> (lease token, its task)
        self.steps: dict[str, asyncio.Task[float | None]] = {}  # webhook -> the step its task is waiting on
        self._poke = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._stopping = False

    # ---- leases ---------------------------------------------------------------------------------------------

    async def start(self) -> None:
        self._stopping = False
        self._task = start_loop(self._run, "webhook dispatcher")

    async def stop(self, release: bool = True) -> None:
        """Stop delivering and give the leases back once each webhook's step in flight has ended (a POST is
        answered or times out, and its outcome is stored), so no other dispatcher sends while it is open; a step
        still running after STOP_GRACE_SECONDS is abandoned and its lease left to run out. release=False
        abandons the steps in flight and keeps the leases until they run out, as a process that died would:
        the batches in flight are sent again by the next holder."""
        task, self._task = self._task, None
        self._stopping = True  # (a cancellation a store client turns into its own error ends the loop too)
        await cancel_and_wait(task)
        served, self.serving = self.serving, {}  # no webhook starts another step from here on
        steps = {name: self.steps.get(name) for name in served}
        try:
            for _token, serving in served.values():
                with contextlib.suppress(Exception):  # how the delivery task ended does not matter now
                    await cancel_and_wait(serving)
            ended = await self._finish(steps, STOP_GRACE_SECONDS if release else 0.0)
            if release:
                for name in ended:
                    with contextlib.suppress(Exception):  # a lease left behind runs out by itself
                        await self.store.release_lease(name, served[name][0])
        finally:
            for step in steps.values():
                if step is not None and not step.done():
                    step.cancel()
            self.sender.close()

    @staticmethod
    async def _finish(steps: Mapping[str, asyncio.Task[float | None] | None], grace: float) -> set[str]:
        """Wait up to `grace` seconds for the steps in flight together, cancel those still running: the webhooks
        whose step (if any) ended by itself."""
        running = [step for step in steps.values() if step is not None and not step.done()]
        if running and grace > 0:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(grace):
                    await asyncio.wait(running)
        ended = set()
        for name, step in steps.items():
            if step is None or step.done():
                ended.add(name)
                if step is not None and not step.cancelled():
                    step.exception()  # (retrieved: how the step ended was logged or does not matter)
            else:
                with contextlib.suppress(Exception):
                    await cancel_and_wait(step)
        return ended

    def poke(self) -> None:
        """A webhook was created: look for it now rather than at the next lease round."""
        self._poke.set()

    async def _run(self) -> None:
        while not self._stopping:
            self._poke.clear()
            try:
                await self.refresh()
            except Exception as exc:
                if store_unavailable(exc):
                    log.warning("webhook leases not renewed now: %r", exc)
                else:
                    log.exception("webhook lease round failed")
            await wait_event(self._poke, self.lease_ms / 1000 / RENEW_FRACTION)

    async def refresh(self) -> None:
        """Renew the leases held (dropping the webhooks lost or deleted) and take every free one."""
        names = set(await self.store.names())
        for name, (token, task) in list(self.serving.items()):
            if task.done() or name not in names or not await self.store.renew_lease(name, token, self.lease_ms):
                await self._drop(name)
        for name in sorted(names - set(self.serving)):
            token = secrets.token_hex(16)
            if await self.store.take_lease(name, token, self.lease_ms):
                log.info("delivering webhook %s", name)
                self.serving[name] = (token, start_loop(functools.partial(self.serve, name, token), f"webhook {name}"))

    async def _drop(self, name: str) -> None:
        """A webhook deleted, or whose lease is lost: its task and step in flight end at once (no waiting for a
        POST: the lease is not this dispatcher's to hand over, or the webhook is gone)."""
        token, task = self.serving.pop(name)
        step = self.steps.get(name)
        if step is not None:
            step.cancel()  # before any wait: a stop() cancelling this refresh must leave no step running
        with contextlib.suppress(Exception):  # how the delivery task ended does not matter now
            await cancel_and_wait(task)
        with contextlib.suppress(Exception):
            await cancel_and_wait(step)
        with contextlib.suppress(Exception):  # a lease left behind runs out by itself
            await self.store.release_lease(name, token)

    # ---- delivering one webhook -----------------------------------------------------------------------------

    async def serve(self, name: str, token: str) -> None:
        """Deliver one webhook while this dispatcher holds its lease (the task refresh() starts for it)."""
        # Until _drop() or stop() takes the webhook away (they cancel this task too: the check covers a swallowed
        # cancel).
        while self.serving.get(name, ("",))[0] == token:
            # Subscribed before the step reads the feed: an advance after that read wakes the wait below.
            advanced = await self.feed.waker.subscribed(1.0)
            step = self.steps[name] = asyncio.ensure_future(self.step(name, token))
            try:
                delay = await asyncio.shield(step)
            except LeaseLost:
                log.info("no longer delivering webhook %s", name)
                return
            except Exception as exc:
                if store_unavailable(exc):
                    log.warning("webhook %s: a store is unavailable: %r", name, exc)
                else:
                    log.exception("webhook %s: delivery step failed", name)
                delay = STORE_RETRY_SECONDS
            finally:
                if self.steps.get(name) is step:
                    del self.steps[name]
            if delay is None:
                await wait_event(advanced, IDLE_SECONDS)
            elif delay > 0:
                await self.clock.sleep(delay)

    async def step(self, name: str, token: str) -> float | None:
        """One move of a webhook: send its batch in flight once due, or make the next batch and send it.
        Seconds until the next move is due: 0 at once, None once the feed advances. LeaseLost: stop."""
        state = await self.store.get(name)
        if state is None:
            raise LeaseLost(name)
        docs: list[dict[str, Any]] | None = None  # the batch's documents when just read
        if state.batch_id is None:
            made = await self._next_batch(state, token)
            if made is None:
                return None
            state, docs = made
            if state.batch_id is None:  # events passed without one the types filter keeps
                return 0
        elif state.next_attempt_at is not None and state.next_attempt_at > _ms(self.clock.now()):
            return (state.next_attempt_at - _ms(self.clock.now())) / 1000
        return await self._send(state, token, docs)

    async def _next_batch(self, state: WebhookState, token: str) -> tuple[WebhookState, list[dict[str, Any]]] | None:
        """Read the feed from the position and store the next batch: the new state and the batch's documents;
        None when nothing is new (a state with no batch when every event read was filtered out)."""
        kept: list[dict[str, Any]] = []
        to = state.position
        for _ in range(SCAN_PAGES):
            docs, after = await self.feed.read(to, BATCH_LIMIT - len(kept))
            moved, to = after != to, after
            kept += [doc for doc in docs if state.types is None or doc["type"] in state.types]
            if len(kept) >= BATCH_LIMIT or not moved:
                break
        if to == state.position:
            return None
        if not kept:
            if not await self.store.commit(state.name, token, {"position": encode_position(to)}):
                raise LeaseLost(state.name)
            return replace(state, position=to), []
        ids = [int(doc["_id"]) for doc in kept]
        batch_id = str(uuid.uuid4())
        fields = {"batch_id": batch_id, "batch_events": ",".join(map(str, ids)), "batch_to": encode_position(to)}
        if not await self.store.commit(state.name, token, {**fields, "attempts": 0}, ("next_attempt_at",)):
            raise LeaseLost(state.name)
        made = replace(state, batch_id=batch_id, batch_events=ids, batch_to=to, attempts=0, next_attempt_at=None)
        return made, kept

    async def _send(self, state: WebhookState, token: str, docs: list[dict[str, Any]] | None) -> float:
        assert state.batch_id is not None
        if docs is None:  # a batch stored earlier (a retry, or another dispatcher's): read again by its ids
            docs = await self.feed.documents(state.batch_events)
        if len(docs) != len(state.batch_events):
            # Ids below a watermark are in MongoDB for good; one missing means the ledger lost it: never skip.
            raise RuntimeError(f"webhook {state.name}: transactions of batch {state.batch_id} are missing")
        body = orjson.dumps({"events": await self.feed.render(docs, LANGUAGE)})
        # The lease is ours for LEASE_MS from here, well beyond the POST's SEND_TIMEOUT_SECONDS.
        if not await self.store.renew_lease(state.name, token, self.lease_ms):
            raise LeaseLost(state.name)
        timestamp = math.floor(self.clock.now())
        headers = {
            "Content-Type": "application/json",
            "User-Agent": "billing-webhooks/1",
            "Billing-Webhook-Id": state.name,
            "Billing-Delivery-Id": state.batch_id,
            SIGNATURE_HEADER: sign(state.secret, timestamp, body),
        }
        error = await self.sender.post(state.url, body, headers)
        now = self.clock.now()
        if error is None:
            fields: dict[str, str | int] = {
                "position": encode_position(state.batch_to),
                "attempts": 0,
                "last_attempt_at": _ms(now),
                "last_success_at": _ms(now),
            }
            cleared = ("batch_id", "batch_events", "batch_to", "next_attempt_at", "last_error")
            if not await self.store.commit(state.name, token, fields, cleared):
                raise LeaseLost(state.name)
            if self.on_delivered is not None:
                self.on_delivered(state.name, len(docs))
            return 0
        attempts = state.attempts + 1
        delay = backoff(attempts)
        log.warning("webhook %s: delivery %s failed (attempt %d): %s", state.name, state.batch_id, attempts, error)
        fields = {
            "attempts": attempts,
            "next_attempt_at": _ms(now + delay),
            "last_error": error[:MAX_ERROR_TEXT],
            "last_attempt_at": _ms(now),
        }
        if self.on_failure is not None:
            self.on_failure(state.name)
        if not await self.store.commit(state.name, token, fields):
            raise LeaseLost(state.name)
        return delay
