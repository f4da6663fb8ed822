"""Signed report links: HMAC-SHA256 over the month and the expiry, checked in constant time."""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Callable
from urllib.parse import urlencode

from billing.core.errors import ApiError
from billing.core.parsing import ParseError, epoch_seconds, hex_sha256
from billing.core.timefmt import format_ms

LINK_PATH = "/v1/reports/revenue/{month}.csv"
_PURPOSE = b"billing revenue report v1"


class LinkSigner:
    """Makes and checks `<base>/v1/reports/revenue/<month>.csv?expires=<epoch s>&signature=<hex>`."""

    def __init__(self, secret: str, ttl_seconds: int, clock: Callable[[], float] = time.time) -> None:
        self._key = secret.encode("utf-8")
        self.ttl_seconds = ttl_seconds
        self.clock = clock

    def signature(self, month: str, expires: int) -> str:
        message = b"\n".join((_PURPOSE, month.encode("ascii"), str(expires).encode("ascii")))
        return hmac.new(self._key, message, hashlib.sha256).hexdigest()

    def link(self, month: str, base_url: str, bom: bool | None = None) -> dict[str, str]:
        """The JSON body of GET /v1/reports/revenue: {month, url, expires_at}."""
        expires = int(self.clock()) + self.ttl_seconds
        query = {"expires": str(expires), "signature": self.signature(month, expires)}
        if bom is not None:
            query["bom"] = "1" if bom else "0"
        url = base_url.rstrip("/") + LINK_PATH.format(month=month) + "?" + urlencode(query)
        return {"month": month, "url": url, "expires_at": format_ms(expires * 1000)}

    def verify(self, month: str, expires: str | None, signature: str | None) -> None:
        """Raise 403 invalid_signature unless the link was signed here for this month and is still valid."""
        try:
            expiry = epoch_seconds(expires or "")
            given = hex_sha256(signature or "")
        except ParseError:
            raise ApiError("invalid_signature", "The link lacks a valid expires/signature pair") from None
        expected = self.signature(month, expiry) if month.isascii() else ""
        if not hmac.compare_digest(expected, given):
            raise ApiError("invalid_signature", "The link's signature does not match; ask for a new link")
        if expiry <= self.clock():
            raise ApiError("invalid_signature", f"The link expired at {format_ms(expiry * 1000)}")
