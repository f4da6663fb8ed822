"""Console sessions: a signed cookie holding a token's SHA-256 digest, resolved to roles on every request."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from typing import Any

from billing.auth import Authenticator, Principal, token_digest
from billing.config import Settings

SESSION_COOKIE = "console_session"
XSRF_COOKIE = "console_xsrf"
LANG_COOKIE = "console_lang"
SESSION_MAX_AGE_DAYS = 1  # a signed value older than this is refused even if the browser kept it


def cookie_secret(settings: Settings) -> str:
    """The key Tornado signs cookies with: derived from BILLING_SECRET, so report links use another key."""
    base = settings.secret or secrets.token_urlsafe(32)
    return hmac.new(base.encode(), b"billing console cookies", hashlib.sha256).hexdigest()


def cookie_flags(secure: bool) -> dict[str, Any]:
    """Flags of every console cookie: no script may read it and no other site may send it."""
    return {"httponly": True, "samesite": "Strict", "secure": secure, "path": "/console"}


def session_value(token: str, auth: Authenticator) -> tuple[str, Principal] | None:
    """What the session cookie holds for a valid token (its digest in hex, never the token), or None."""
    digest = token_digest(token.strip())
    principal = auth.principal_for_digest(digest)
    if principal is None:
        return None
    return digest.hex(), principal


def resolve(value: bytes | None, auth: Authenticator) -> Principal | None:
    """The principal a verified cookie value refers to now (roles re-read from the configured tokens)."""
    if not value:
        return None
    try:
        digest = bytes.fromhex(value.decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        return None
    if len(digest) != hashlib.sha256().digest_size:
        return None
    return auth.principal_for_digest(digest)
