"""The admin side of webhooks (PUT, GET, DELETE /v1/webhooks/{name}): definitions checked and stored, states
rendered, and the figures /metrics reports per webhook."""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from typing import Any

from billing.core.errors import ApiError
from billing.core.schemas import WEBHOOK_NAME_PATTERN, WebhookRequest
from billing.core.timefmt import format_ms
from billing.views.events import EventFeed
from billing.webhooks.addresses import Resolve, check_url, resolve
from billing.webhooks.store import WebhookState, WebhookStore

_NAME = re.compile(WEBHOOK_NAME_PATTERN)


def check_name(name: str) -> str:
    if not _NAME.fullmatch(name):
        raise ApiError(
            "validation_error",
            "Request is not valid",
            [{"field": "name", "message": "must be 1 to 64 characters of A-Z, a-z, 0-9, _ and -"}],
        )
    return name


def _time(ms: int | None) -> str | None:
    return format_ms(ms) if ms is not None else None


def _item(state: WebhookState) -> dict[str, Any]:
    return {
        "name": state.name,
        "url": state.url,
        "types": list(state.types) if state.types is not None else None,
        "created_at": format_ms(state.created_at),
    }


def pending(state: WebhookState, readable: list[int]) -> int:
    """Feed events after the webhook's position that the feed may deliver now, counted from sequence numbers
    (before the types filter; a number a failed script consumed without a transaction counts until passed)."""
    return sum(max(0, mark - seq) for mark, seq in zip(readable, state.position, strict=False))


class Webhooks:
    """What the admin endpoints do; `on_created` tells this process's dispatcher to look for a new webhook."""

    def __init__(
        self,
        store: WebhookStore,
        feed: EventFeed,
        allow_private: bool,
        lookup: Resolve = resolve,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.feed = feed
        self.allow_private = allow_private
        self.lookup = lookup
        self.clock = clock
        self.on_created: Callable[[], None] | None = None

    async def put(self, name: str, request: WebhookRequest) -> dict[str, Any]:
        check_name(name)
        await check_url(request.url, self.allow_private, self.lookup)
        # A new webhook starts after every transaction made so far (an update keeps its position).
        position = await self.feed.heads()
        created, secret, created_at = await self.store.put(
            name, request.url, request.types, int(self.clock() * 1000), position
        )
        if created and self.on_created is not None:
            self.on_created()
        return {
            "name": name,
            "url": request.url,
            "types": request.types,
            "secret": secret if created else None,
            "created_at": format_ms(created_at),
        }

    async def listing(self) -> dict[str, Any]:
        return {"items": [_item(state) for state in await self.store.all()]}

    async def status(self, name: str) -> dict[str, Any]:
        state = await self.store.get(check_name(name))
        if state is None:
            raise ApiError("webhook_not_found", f"No webhook named {name}")
        return {
            **_item(state),
            "delivered_through": self.feed.cursor(state.position),
            "pending": pending(state, await self.feed.readable()),
            "attempts": state.attempts,
            "last_error": state.last_error,
            "last_attempt_at": _time(state.last_attempt_at),
            "last_success_at": _time(state.last_success_at),
            "next_attempt_at": _time(state.next_attempt_at),
        }

    async def delete(self, name: str) -> None:
        if not await self.store.delete(check_name(name)):
            raise ApiError("webhook_not_found", f"No webhook named {name}")

    async def gauges(self) -> list[tuple[str, int, float | None]]:
        """For /metrics: per webhook, (name, pending events, last acknowledged delivery in epoch seconds)."""
        states = await self.store.all()
        if not states:
            return []
        readable = await self.feed.readable()
        return [
            (s.name, pending(s, readable), s.last_success_at / 1000 if s.last_success_at is not None else None)
            for s in states
        ]
