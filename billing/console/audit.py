"""The console's audit log: who looked at which user's money, when, on which page, from which address.

One Redis stream (RedisKeys.console_audit) capped near BILLING_CONSOLE_AUDIT_MAXLEN entries by XADD's
approximate MAXLEN, so the oldest entries go first and the cap costs nothing per append.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass
from typing import Any

from billing.api.auth import Principal
from billing.core.timefmt import format_ms
from billing.infra.redis_route import RedisClient
from billing.ledger.scripts import RedisKeys

PAGE_SIZE = 50  # entries on one page of the console's audit page
SCAN_CHUNK = 500  # entries read per XREVRANGE while filtering
SCAN_LIMIT = 20_000  # entries one filtered page reads at most before it offers the next page


@dataclass(frozen=True)
class AuditEntry:
    id: str  # the stream entry's id: its order, and the cursor of the next page
    time: str
    who: str
    kind: str  # "person" or "token"
    page: str
    user_id: int
    address: str

    def json(self) -> dict[str, Any]:
        return asdict(self)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _entry(entry_id: Any, fields: dict[Any, Any]) -> AuditEntry:
    got = {_text(k): _text(v) for k, v in fields.items()}
    return AuditEntry(
        id=_text(entry_id),
        time=got.get("time", ""),
        who=got.get("who", ""),
        kind=got.get("kind", ""),
        page=got.get("page", ""),
        user_id=int(got.get("user_id", "0") or 0),
        address=got.get("address", ""),
    )


class AuditLog:
    def __init__(self, redis: RedisClient, keys: RedisKeys, maxlen: int) -> None:
        self.redis = redis
        self.key = keys.console_audit()
        self.maxlen = maxlen

    async def record(self, principal: Principal, page: str, user_id: int, address: str) -> None:
        fields: dict[str, str | int] = {
            "time": format_ms(int(time.time() * 1000)),
            "who": principal.name,
            "kind": "person" if principal.person else "token",
            "page": page,
            "user_id": user_id,
            "address": address,
        }
        await self.redis.xadd(self.key, fields, maxlen=self.maxlen, approximate=True)  # type: ignore[arg-type]

    async def page(
        self, who: str | None = None, user_id: int | None = None, before: str | None = None, size: int = PAGE_SIZE
    ) -> tuple[list[AuditEntry], str | None]:
        """Newest first: up to size entries older than `before` that match; and the cursor of the next page.

        Filtering reads the stream backwards in chunks and stops after SCAN_LIMIT entries, so a rare filter
        costs a bounded read per page; the cursor then continues where this page stopped reading.
        """
        found: list[AuditEntry] = []
        upper = f"({before}" if before else "+"
        read = 0
        while read < SCAN_LIMIT:
            chunk = await self.redis.xrevrange(self.key, max=upper, min="-", count=SCAN_CHUNK)
            if not chunk:
                return found, None
            for entry_id, fields in chunk:
                read += 1
                entry = _entry(entry_id, fields)
                if (who is None or entry.who == who) and (user_id is None or entry.user_id == user_id):
                    found.append(entry)
                    if len(found) == size:
                        return found, entry.id
            last = _text(chunk[-1][0])
            if len(chunk) < SCAN_CHUNK:
                return found, None
            upper = f"({last}"
        return found, upper[1:]

    async def since(self, start_ms: int = 0) -> AsyncIterator[AuditEntry]:
        """Every entry from start_ms on, oldest first (what `billing audit export` writes)."""
        lower = f"{start_ms}-0"
        while True:
            chunk = await self.redis.xrange(self.key, min=lower, max="+", count=SCAN_CHUNK)
            for entry_id, fields in chunk:
                yield _entry(entry_id, fields)
            if len(chunk) < SCAN_CHUNK:
                return
            lower = f"({_text(chunk[-1][0])}"
