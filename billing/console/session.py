"""Console sessions: a random id in a signed cookie, a Redis key with a TTL behind it, roles resolved per request.

The key holds the token's SHA-256 digest (never the token), or for a person `person:<name>:<salt>`, so every
request re-reads the principal's roles from the configured tokens or the account; removing the account or
changing its password (a new salt) ends its sessions, and signing out deletes the key, so a copied cookie
stops working at once.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from typing import Any

from billing.api.auth import Authenticator, Principal, token_digest
from billing.console.accounts import Account, Accounts
from billing.core.config import Settings
from billing.infra.redis_route import RedisClient
from billing.ledger.scripts import RedisKeys

SESSION_COOKIE = "console_session"
XSRF_COOKIE = "console_xsrf"
LANG_COOKIE = "console_lang"
SESSION_MAX_AGE_DAYS = 1  # a signed value older than this is refused even if the browser kept it
SESSION_TTL_SECONDS = SESSION_MAX_AGE_DAYS * 86_400  # and its Redis key lives exactly as long
SESSION_ID_BYTES = 32  # 256 random bits
PERSON = "person:"  # a person's session value starts with it; a token's is a hex digest


def cookie_secret(settings: Settings) -> str:
    """The key Tornado signs cookies with: derived from BILLING_SECRET, so report links use another key."""
    base = settings.secret or secrets.token_urlsafe(32)
    return hmac.new(base.encode(), b"billing console cookies", hashlib.sha256).hexdigest()


def cookie_flags(secure: bool) -> dict[str, Any]:
    """Flags of every console cookie: no script may read it and no other site may send it."""
    return {"httponly": True, "samesite": "Strict", "secure": secure, "path": "/console"}


def session_value(token: str, auth: Authenticator) -> tuple[str, Principal] | None:
    """What a session stores for a valid token (its digest in hex, never the token) and its principal, or None."""
    digest = token_digest(token.strip())
    principal = auth.principal_for_digest(digest)
    if principal is None:
        return None
    return digest.hex(), principal


def person_value(account: Account) -> str:
    """What a session stores for a person: the name and the current password's salt (not secret)."""
    return f"{PERSON}{account.name}:{account.salt}"


def resolve(value: bytes | str | None, auth: Authenticator) -> Principal | None:
    """The principal a stored token digest refers to now (roles re-read from the configured tokens)."""
    if not value:
        return None
    try:
        digest = bytes.fromhex(value.decode("ascii") if isinstance(value, bytes) else value)
    except (UnicodeDecodeError, ValueError):
        return None
    if len(digest) != hashlib.sha256().digest_size:
        return None
    return auth.principal_for_digest(digest)


class Sessions:
    """Signed-in console sessions in Redis, one key per session with SESSION_TTL_SECONDS to live."""

    def __init__(self, redis: RedisClient, keys: RedisKeys) -> None:
        self.redis = redis
        self.keys = keys

    def _key(self, session_id: bytes | str) -> str:
        raw = session_id.encode() if isinstance(session_id, str) else session_id
        return self.keys.console_session(hashlib.sha256(raw).hexdigest())

    async def start(self, value: str) -> str:
        """A new session for this value (session_value's or person_value's); returns its id (the cookie's)."""
        session_id = secrets.token_urlsafe(SESSION_ID_BYTES)
        await self.redis.set(self._key(session_id), value, ex=SESSION_TTL_SECONDS)
        return session_id

    async def principal(self, session_id: bytes | None, auth: Authenticator) -> Principal | None:
        """Who this session is signed in as now; None once it was ended, expired or never existed."""
        if not session_id:
            return None
        value = await self.redis.get(self._key(session_id))
        text = value.decode("utf-8", "replace") if isinstance(value, bytes) else value
        if text and text.startswith(PERSON):
            name, _, salt = text[len(PERSON) :].rpartition(":")
            account = await Accounts(self.redis, self.keys).get(name)
            if account is None or not hmac.compare_digest(account.salt, salt):
                return None  # removed, or its password changed since this session began
            return account.principal()
        return resolve(value, auth)

    async def end(self, session_id: bytes | None) -> None:
        if session_id:
            await self.redis.delete(self._key(session_id))
