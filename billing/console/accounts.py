"""People's console accounts: a name, roles and a scrypt password hash in one Redis hash each; sign-in limits.

A password is hashed with the standard library's scrypt (memory-hard) and a random salt; the hash keeps its
parameters next to it, so raising them later leaves older hashes checkable. Failed sign-ins are counted per
account name and per client address in Redis keys that expire, so a guesser is slowed down on both sides.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import re
import secrets
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from billing.api.auth import Principal
from billing.core.roles import ROLES
from billing.core.timefmt import format_ms
from billing.infra.redis_route import RedisClient
from billing.ledger.scripts import RedisKeys

NAME_PATTERN = re.compile(r"[a-z0-9._-]{1,64}")
MIN_PASSWORD_LENGTH = 12
# scrypt's cost: 2**14 * 8 * 128 bytes = 16 MiB of memory per hash, about 50 ms of one core.
SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**14, 8, 1
SALT_BYTES = 16
KEY_BYTES = 32
MAX_FAILURES = 5  # failed sign-ins per account name and per client address ...
FAILURE_WINDOW_SECONDS = 15 * 60  # ... within this window, counted from the first failure


class AccountError(ValueError):
    """A name, role list or password that an account cannot have; the message is one sentence."""


class NameTaken(AccountError):
    """An account of that name exists already."""


def check_name(name: str) -> str:
    if not NAME_PATTERN.fullmatch(name):
        raise AccountError(f"bad name {name!r}: use 1 to 64 of a-z, 0-9, '.', '_' and '-'")
    return name


def parse_roles(text: str) -> frozenset[str]:
    """Comma-separated roles of billing/core/roles.py; at least one."""
    names = [part.strip() for part in text.split(",") if part.strip()]
    unknown = sorted(set(names) - ROLES)
    if unknown or not names:
        what = f"unknown roles {', '.join(unknown)}" if unknown else "no role given"
        raise AccountError(f"{what}; roles are {', '.join(sorted(ROLES))}")
    return frozenset(names)


def check_password(password: str) -> str:
    if len(password) < MIN_PASSWORD_LENGTH:
        raise AccountError(f"the password must have at least {MIN_PASSWORD_LENGTH} characters")
    return password


def _scrypt(password: str, salt: bytes, n: int, r: int, p: int, length: int) -> bytes:
    # maxmem above the 16 MiB that n=2**14, r=8 needs (OpenSSL's default limit is 32 MiB), room for raising n
    return hashlib.scrypt(
        password.encode("utf-8", "surrogatepass"), salt=salt, n=n, r=r, p=p, maxmem=256 * 1024 * 1024, dklen=length
    )


def hash_password(password: str) -> dict[str, str]:
    """The stored form of a password: the KDF, its parameters, the salt and the derived key (hex)."""
    salt = secrets.token_bytes(SALT_BYTES)
    key = _scrypt(password, salt, SCRYPT_N, SCRYPT_R, SCRYPT_P, KEY_BYTES)
    return {
        "kdf": "scrypt",
        "n": str(SCRYPT_N),
        "r": str(SCRYPT_R),
        "p": str(SCRYPT_P),
        "salt": salt.hex(),
        "key": key.hex(),
    }


def password_matches(password: str, stored: Mapping[str, str]) -> bool:
    """Whether the password derives the stored key, with the parameters stored beside it."""
    try:
        salt, key = bytes.fromhex(stored["salt"]), bytes.fromhex(stored["key"])
        n, r, p = int(stored["n"]), int(stored["r"]), int(stored["p"])
    except (KeyError, ValueError):
        return False
    if stored.get("kdf") != "scrypt" or not key:
        return False
    return hmac.compare_digest(_scrypt(password, salt, n, r, p, len(key)), key)


# Checked when the name is unknown, so an unknown name costs the same time as a wrong password.
_DUMMY = hash_password(secrets.token_urlsafe(16))


@dataclass(frozen=True)
class Account:
    name: str
    roles: frozenset[str]
    created_at: str
    salt: str  # changes with every password: a session started before a change stops working

    def principal(self) -> Principal:
        return Principal(name=self.name, roles=self.roles, person=True)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _decoded(raw: Mapping[Any, Any]) -> dict[str, str]:
    return {_text(field): _text(value) for field, value in raw.items()}


def _account(name: str, fields: Mapping[str, str]) -> Account | None:
    if not fields.get("key"):
        return None
    roles = frozenset(role for role in fields.get("roles", "").split(",") if role in ROLES)
    return Account(name=name, roles=roles, created_at=fields.get("created_at", ""), salt=fields.get("salt", ""))


class Accounts:
    """The console's people: one Redis hash per account (RedisKeys.console_account)."""

    def __init__(self, redis: RedisClient, keys: RedisKeys) -> None:
        self.redis = redis
        self.keys = keys

    async def _fields(self, name: str) -> dict[str, str]:
        return _decoded(await self.redis.hgetall(self.keys.console_account(name)))  # type: ignore[misc]

    async def get(self, name: str) -> Account | None:
        if not NAME_PATTERN.fullmatch(name):
            return None
        return _account(name, await self._fields(name))

    async def add(self, name: str, roles: Iterable[str], password: str) -> Account:
        """A new account; AccountError if the name is taken or anything is invalid."""
        check_name(name)
        role_set = parse_roles(",".join(roles))
        check_password(password)
        stored = await asyncio.to_thread(hash_password, password)
        key = self.keys.console_account(name)
        created = format_ms(int(time.time() * 1000))
        # HSETNX on the creation time claims the name: of two concurrent adds, one wins and one is refused.
        if not await self.redis.hsetnx(key, "created_at", created):  # type: ignore[misc]
            raise NameTaken(f"an account named {name!r} already exists")
        await self.redis.hset(key, mapping={"roles": ",".join(sorted(role_set)), **stored})  # type: ignore[misc]
        return Account(name=name, roles=role_set, created_at=created, salt=stored["salt"])

    async def set_password(self, name: str, password: str) -> None:
        check_password(password)
        if await self.get(name) is None:
            raise LookupError(name)
        stored = await asyncio.to_thread(hash_password, password)
        await self.redis.hset(self.keys.console_account(name), mapping=stored)  # type: ignore[misc]

    async def remove(self, name: str) -> bool:
        if not NAME_PATTERN.fullmatch(name):
            return False
        return bool(await self.redis.delete(self.keys.console_account(name)))

    async def all(self) -> list[Account]:
        prefix = self.keys.console_account("")
        names = sorted(
            [_text(key)[len(prefix) :] async for key in self.redis.scan_iter(match=self.keys.console_account_pattern())]
        )
        found = [await self.get(name) for name in names]
        return [account for account in found if account is not None]

    async def authenticate(self, name: str, password: str) -> Account | None:
        """The account if the password is its own; an unknown name costs one hash too (no timing oracle)."""
        fields = await self._fields(name) if NAME_PATTERN.fullmatch(name) else {}
        account = _account(name, fields)
        matches = await asyncio.to_thread(password_matches, password, fields if account else _DUMMY)
        return account if account is not None and matches else None


class SignInLimit:
    """At most MAX_FAILURES failed sign-ins per account name and per client address per window."""

    def __init__(self, redis: RedisClient, keys: RedisKeys) -> None:
        self.redis = redis
        self.keys = keys

    def _keys(self, name: str | None, address: str) -> list[str]:
        keys = [self.keys.console_signin_failures("addr", address)]
        if name is not None:
            keys.append(self.keys.console_signin_failures("name", name))
        return keys

    async def wait_seconds(self, name: str | None, address: str) -> int:
        """0 if a sign-in may be tried now; else the seconds until the fullest counter expires."""
        wait = 0
        for key in self._keys(name, address):
            count = await self.redis.get(key)
            if count is not None and int(count) >= MAX_FAILURES:
                wait = max(wait, int(await self.redis.ttl(key)))
        return max(wait, 0)

    async def failed(self, name: str | None, address: str) -> None:
        for key in self._keys(name, address):  # one transaction per key: in a Redis Cluster they are apart
            async with self.redis.pipeline(transaction=True) as pipe:
                pipe.incr(key)
                pipe.expire(key, FAILURE_WINDOW_SECONDS, nx=True)  # the window starts at the first failure
                await pipe.execute()

    async def succeeded(self, name: str) -> None:
        await self.redis.delete(self.keys.console_signin_failures("name", name))
