"""The console's commands: `billing console-user add|list|remove|passwd` and `billing audit export`.

They need only Redis (BILLING_REDIS_URL): the accounts and the audit log live there, next to the console
sessions. Failures are CommandError, one line: exit status 1 when the account named does not exist or
already does, 2 for anything else (bad input, Redis unreachable).
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import sys
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar, cast

import orjson

from billing.console.accounts import MIN_PASSWORD_LENGTH, AccountError, Accounts, NameTaken, check_password, parse_roles
from billing.console.audit import AuditLog
from billing.core.config import Settings
from billing.core.parsing import ParseError
from billing.core.parsing import timestamp as parse_timestamp
from billing.core.roles import ROLES
from billing.core.timefmt import datetime_to_ms
from billing.infra.redis_route import RedisClient
from billing.infra.stores import close_redis, connect_redis
from billing.ledger.scripts import RedisKeys
from billing.ledger.unavailable import store_unavailable
from billing.terminal import Command, CommandError, one_line

T = TypeVar("T")
NEEDS_REDIS = "needs BILLING_REDIS_URL (the embedded store lives inside one process)"
REDIS_SETTINGS = ("redis_url", "redis_mode", "redis_prefix", "request_timeout_seconds")
NOT_FOUND = 1  # exit status: no such account, or the name is taken


def _with_redis(settings: Settings, work: Callable[[RedisClient, RedisKeys], Awaitable[T]]) -> T:
    """Run the work against Redis on a fresh event loop; an unreachable Redis is one line."""
    if not settings.redis_url:
        raise CommandError(NEEDS_REDIS)

    async def run() -> T:
        redis = connect_redis(settings)
        try:
            try:
                await cast(Awaitable[bool], redis.ping())
            except Exception as exc:
                if not store_unavailable(exc):
                    raise
                raise CommandError(f"Redis unreachable (BILLING_REDIS_URL): {one_line(exc)}") from None
            return await work(redis, RedisKeys(settings.redis_prefix))
        finally:
            await close_redis(redis)

    try:
        return asyncio.run(run())
    except CommandError:
        raise
    except Exception as exc:
        if not store_unavailable(exc):
            raise
        raise CommandError(f"Redis failed: {one_line(exc)}") from None


def read_password(from_stdin: bool) -> str:
    """The new password: one line of stdin with --password-stdin, else asked twice on the terminal."""
    if from_stdin:
        line = sys.stdin.readline()
        password = line[:-1] if line.endswith("\n") else line
        return check_password(password.removesuffix("\r"))
    if not sys.stdin.isatty():
        raise CommandError("no terminal to ask for the password: pass it on stdin with --password-stdin")
    first = getpass.getpass(f"Password (at least {MIN_PASSWORD_LENGTH} characters): ")
    check_password(first)
    if getpass.getpass("The same password again: ") != first:
        raise CommandError("the two passwords differ")
    return first


def _account_errors(
    run: Callable[[Settings, argparse.Namespace], int],
) -> Callable[[Settings, argparse.Namespace], int]:
    def wrapped(settings: Settings, args: argparse.Namespace) -> int:
        try:
            return run(settings, args)
        except AccountError as exc:
            raise CommandError(str(exc), NOT_FOUND if isinstance(exc, NameTaken) else 2) from None

    return wrapped


@_account_errors
def _console_user(settings: Settings, args: argparse.Namespace) -> int:
    action: str = args.action
    if action == "add":
        roles = parse_roles(args.roles)  # checked before the password is asked for
        password = read_password(args.password_stdin)

        async def add(redis: RedisClient, keys: RedisKeys) -> str:
            account = await Accounts(redis, keys).add(args.name, roles, password)
            return f"added {account.name} (roles: {', '.join(sorted(account.roles))})"

        print(_with_redis(settings, add))
    elif action == "passwd":
        password = read_password(args.password_stdin)

        async def passwd(redis: RedisClient, keys: RedisKeys) -> str:
            try:
                await Accounts(redis, keys).set_password(args.name, password)
            except LookupError:
                raise CommandError(f"no account named {args.name!r}", NOT_FOUND) from None
            return f"changed the password of {args.name}; its open console sessions have ended"

        print(_with_redis(settings, passwd))
    elif action == "remove":

        async def remove(redis: RedisClient, keys: RedisKeys) -> str:
            if not await Accounts(redis, keys).remove(args.name):
                raise CommandError(f"no account named {args.name!r}", NOT_FOUND)
            return f"removed {args.name}; its open console sessions have ended"

        print(_with_redis(settings, remove))
    else:

        async def listing(redis: RedisClient, keys: RedisKeys) -> list[Any]:
            return await Accounts(redis, keys).all()

        for account in _with_redis(settings, listing):
            print(f"{account.name}\t{','.join(sorted(account.roles))}\t{account.created_at}")
    return 0


def _configure_console_user(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Manage people's console accounts in Redis: each has a name, roles and a password hashed with "
        "scrypt. `list` prints one tab-separated line per account: name, roles, creation time."
    )
    actions = parser.add_subparsers(dest="action", required=True, metavar="<action>", title="actions")
    roles = ", ".join(sorted(ROLES))
    name_help = "the account name: 1 to 64 of a-z, 0-9, '.', '_', '-' (required; no default)"
    stdin_help = "read the password from one line of stdin instead of asking twice on the terminal (default: ask)"
    add = actions.add_parser("add", help="create an account", description="Create an account.")
    add.add_argument("name", help=name_help)
    add.add_argument("--roles", required=True, help=f"comma-separated roles from: {roles} (required; no default)")
    add.add_argument("--password-stdin", action="store_true", help=stdin_help)
    actions.add_parser("list", help="list the accounts", description="List the accounts, sorted by name.")
    remove = actions.add_parser(
        "remove", help="delete an account", description="Delete an account; its sessions end at once."
    )
    remove.add_argument("name", help=name_help)
    passwd = actions.add_parser(
        "passwd", help="set a new password", description="Set an account's password; its sessions end at once."
    )
    passwd.add_argument("name", help=name_help)
    passwd.add_argument("--password-stdin", action="store_true", help=stdin_help)


def _audit(settings: Settings, args: argparse.Namespace) -> int:
    start_ms = 0
    if args.since is not None:
        try:
            start_ms = max(0, datetime_to_ms(parse_timestamp(args.since)))
        except ParseError as exc:
            raise CommandError(f"--since {exc}") from None

    async def export(redis: RedisClient, keys: RedisKeys) -> int:
        count = 0
        async for entry in AuditLog(redis, keys, settings.console_audit_maxlen).since(start_ms):
            sys.stdout.buffer.write(orjson.dumps(entry.json()) + b"\n")
            count += 1
        sys.stdout.flush()
        return count

    _with_redis(settings, export)
    return 0


def _configure_audit(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Export the console's audit log (who looked at which user's money, when, on which page, from which "
        "address) to stdout as JSON lines, oldest first."
    )
    actions = parser.add_subparsers(dest="action", required=True, metavar="<action>", title="actions")
    export = actions.add_parser(
        "export", help="write the entries as JSON lines", description="Write the entries as JSON lines."
    )
    export.add_argument(
        "--since",
        default=None,
        metavar="RFC3339",
        help="only entries at or after this time, like 2026-11-01T00:00:00Z (default: every entry kept)",
    )


COMMANDS: dict[str, Command] = {
    "console-user": Command(
        "add, list, remove people's console accounts or set their passwords",
        REDIS_SETTINGS,
        _configure_console_user,
        _console_user,
    ),
    "audit": Command(
        "export the console's audit log as JSON lines",
        (*REDIS_SETTINGS, "console_audit_maxlen"),
        _configure_audit,
        _audit,
    ),
}
