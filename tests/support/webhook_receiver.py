"""A webhook receiver for tests (and the benchmark): a Tornado server on 127.0.0.1 that answers each delivery as
a script says (ok, an error status, too slowly, a dropped connection), records every request and the most
requests it ever had open at once per webhook."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import orjson
import tornado.web

from tests.support.servers import served


@dataclass(frozen=True)
class Answer:
    """How to answer one delivery: `status` after `delay` seconds; `drop`: close the connection instead."""

    status: int = 200
    delay: float = 0.0
    drop: bool = False


OK = Answer()


@dataclass
class Delivery:
    webhook: str
    delivery_id: str
    signature: str
    body: bytes
    answer: Answer
    started: float  # time.monotonic()
    finished: float = 0.0

    @property
    def events(self) -> list[dict[str, Any]]:
        return list(orjson.loads(self.body)["events"])

    @property
    def acknowledged(self) -> bool:
        return 200 <= self.answer.status < 300 and not self.answer.drop


@dataclass
class Receiver:
    """script(n, webhook) -> the answer to the webhook's n-th request (0-based); OK by default."""

    script: Callable[[int, str], Answer] = lambda _n, _webhook: OK
    deliveries: list[Delivery] = field(default_factory=list)
    open_now: Counter[str] = field(default_factory=Counter)
    most_open: Counter[str] = field(default_factory=Counter)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)
    url: str = ""

    def of(self, webhook: str) -> list[Delivery]:
        return [d for d in self.deliveries if d.webhook == webhook]

    def acknowledged_events(self, webhook: str) -> list[dict[str, Any]]:
        """The events of every delivery the webhook's receiver acknowledged, in arrival order."""
        return [event for d in self.of(webhook) if d.acknowledged for event in d.events]

    async def wait_for(self, done: Callable[[], bool], timeout: float = 30.0) -> None:
        async def waiting() -> None:
            while not done():
                self.arrived.clear()
                await self.arrived.wait()

        await asyncio.wait_for(waiting(), timeout)


class _Handler(tornado.web.RequestHandler):
    def initialize(self, receiver: Receiver) -> None:
        self.receiver = receiver

    async def post(self, path: str) -> None:
        webhook = self.request.headers.get("Billing-Webhook-Id", "")
        r = self.receiver
        answer = r.script(len(r.of(webhook)), webhook)
        delivery = Delivery(
            webhook,
            self.request.headers.get("Billing-Delivery-Id", ""),
            self.request.headers.get("Billing-Signature", ""),
            self.request.body,
            answer,
            time.monotonic(),
        )
        r.deliveries.append(delivery)
        r.open_now[webhook] += 1
        r.most_open[webhook] = max(r.most_open[webhook], r.open_now[webhook])
        try:
            if answer.delay:
                await asyncio.sleep(answer.delay)
            if answer.drop:
                assert self.request.connection is not None
                self.request.connection.close()  # type: ignore[attr-defined]
                return
            self.set_status(answer.status)
            self.finish(None if answer.status == 204 else b"ok")
        finally:
            delivery.finished = time.monotonic()
            r.open_now[webhook] -= 1
            r.arrived.set()


@asynccontextmanager
async def receiving(script: Callable[[int, str], Answer] | None = None) -> AsyncIterator[Receiver]:
    receiver = Receiver(script) if script is not None else Receiver()
    app = tornado.web.Application([(r"/(.*)", _Handler, {"receiver": receiver})])
    async with served(app) as url:
        receiver.url = url
        yield receiver
