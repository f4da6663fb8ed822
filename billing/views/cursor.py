"""Opaque, HMAC-signed keyset cursors bound to the exact query they were issued for."""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from typing import Any

import orjson

from billing.core.errors import ApiError
from billing.core.parsing import INT64_MAX, ParseError, cursor_parts

CURSOR_VERSION = 1
_DOMAIN = b"billing:history-cursor:v1"


def _b64encode(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def _b64decode(text: str) -> bytes:
    """base64url without padding; the alphabet is parsing.cursor_parts' to check."""
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def query_fingerprint(parts: list[Any]) -> str:
    """A short digest of everything that defines a result order and set (not the page size)."""
    return hashlib.sha256(orjson.dumps(parts)).hexdigest()[:32]


class CursorCodec:
    """Encodes the last row's sort key as `<payload>.<signature>`, both base64url.

    The payload is JSON {"v": 1, "q": <query fingerprint>, "k": [<sort value>, <id>]}; the signature is
    HMAC-SHA256 over the payload with a key derived from the service secret. A cursor cannot be forged
    or edited without the secret, and it is refused for any query other than the one it was made for.
    """

    def __init__(self, secret: str) -> None:
        self._key = hmac.new(secret.encode("utf-8"), _DOMAIN, hashlib.sha256).digest()

    def _sign(self, payload: bytes) -> bytes:
        return hmac.new(self._key, payload, hashlib.sha256).digest()

    def encode(self, fingerprint: str, value: int, last_id: int) -> str:
        payload = orjson.dumps({"v": CURSOR_VERSION, "q": fingerprint, "k": [value, last_id]})
        return f"{_b64encode(payload)}.{_b64encode(self._sign(payload))}"

    def decode(self, token: str, fingerprint: str) -> tuple[int, int]:
        """The (sort value, id) a cursor carries; ApiError invalid_cursor unless it is ours and for this query."""
        try:
            encoded_payload, encoded_signature = cursor_parts(token)
            payload = _b64decode(encoded_payload)
            signature = _b64decode(encoded_signature)
        except (ParseError, ValueError, binascii.Error):
            raise ApiError("invalid_cursor", "The cursor is malformed; use next_cursor exactly as returned") from None
        if not hmac.compare_digest(signature, self._sign(payload)):
            raise ApiError("invalid_cursor", "The cursor was not issued by this service or was altered")
        try:
            data = orjson.loads(payload)
            version, query, (value, last_id) = data["v"], data["q"], data["k"]
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            raise ApiError("invalid_cursor", "The cursor is malformed") from None
        if version != CURSOR_VERSION or not (_is_int(value) and _is_int(last_id)) or not 1 <= last_id <= INT64_MAX:
            raise ApiError("invalid_cursor", "The cursor is malformed")
        if query != fingerprint:
            raise ApiError(
                "invalid_cursor", "The cursor was made for another user, sort, order or filter; start without it"
            )
        return value, last_id
