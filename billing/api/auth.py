"""Bearer tokens to roles. Tokens are only ever held as SHA-256 digests; a token's name is a digest prefix."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass

from billing.core.errors import ApiError
from billing.core.roles import ROLES, Role


@dataclass(frozen=True)
class Principal:
    """An authenticated caller: a loggable name (never the token) and its roles.

    A token's name is its digest prefix; a person's (a console account, person=True) is the account name.
    """

    name: str
    roles: frozenset[str]
    person: bool = False

    def has_any(self, roles: frozenset[str]) -> bool:
        return Role.ADMIN in self.roles or not self.roles.isdisjoint(roles)


def token_digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()


class Authenticator:
    """Checks `Authorization: Bearer <token>` against the configured tokens."""

    def __init__(self, tokens: dict[str, list[str]]) -> None:
        self._principals: dict[bytes, tuple[bytes, Principal]] = {}
        for token, roles in tokens.items():
            unknown = set(roles) - ROLES
            if unknown:
                raise ValueError(f"unknown roles in BILLING_TOKENS: {sorted(unknown)}")
            digest = token_digest(token)
            self._principals[digest] = (digest, Principal(name=digest.hex()[:12], roles=frozenset(roles)))

    @property
    def configured(self) -> bool:
        return bool(self._principals)

    def authenticate(self, authorization: str | None) -> Principal:
        if not authorization:
            raise ApiError("unauthenticated", "Send Authorization: Bearer <token>")
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise ApiError("unauthenticated", "Send Authorization: Bearer <token>")
        digest = token_digest(token.strip())
        # The dict is keyed by digest, so lookup time does not depend on the token's characters;
        # compare_digest keeps the final check constant-time as well.
        found = self._principals.get(digest)
        if found is None or not hmac.compare_digest(found[0], digest):
            raise ApiError("unauthenticated", "Unknown token")
        return found[1]

    def principal_for_digest(self, digest: bytes) -> Principal | None:
        """The principal whose token has this SHA-256 digest (a console session's reference), or None."""
        found = self._principals.get(digest)
        if found is None or not hmac.compare_digest(found[0], digest):
            return None
        return found[1]

    def authorize(self, authorization: str | None, roles: frozenset[str]) -> Principal:
        principal = self.authenticate(authorization)
        if not principal.has_any(roles):
            raise ApiError("forbidden", f"This operation needs one of the roles: {', '.join(sorted(roles))}")
        return principal


def generate_admin_token() -> str:
    return "adm_" + secrets.token_urlsafe(32)
