"""`billing console-user` and `billing audit export` as real processes against a real Redis."""

from __future__ import annotations

import asyncio
import subprocess
import uuid

import orjson
import pytest
import redis
from redis.asyncio import Redis

from billing.api.auth import Principal
from billing.console.audit import AuditLog
from billing.ledger.scripts import RedisKeys
from tests.processes.test_command_line import BILLING, assert_one_line_error, env, unreachable_redis
from tests.support.servers import RedisServer

PASSWORD = "a long password 1"


@pytest.fixture
def environment(redis_server: RedisServer) -> dict[str, str]:
    return env(BILLING_REDIS_URL=redis_server.url, BILLING_REDIS_PREFIX=f"t{uuid.uuid4().hex[:8]}:")


def run(environment: dict[str, str], *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([BILLING, *args], env=environment, input=stdin, capture_output=True, text=True, timeout=60)


def stored(environment: dict[str, str], name: str) -> dict[bytes, bytes]:
    client = redis.Redis.from_url(environment["BILLING_REDIS_URL"])
    try:
        return client.hgetall(RedisKeys(environment["BILLING_REDIS_PREFIX"]).console_account(name))  # type: ignore[return-value]
    finally:
        client.close()


def test_add_list_passwd_remove(environment: dict[str, str]) -> None:
    done = run(
        environment,
        "console-user",
        "add",
        "anna",
        "--roles",
        "support,accounting",
        "--password-stdin",
        stdin=PASSWORD + "\n",
    )
    assert done.returncode == 0 and done.stdout == "added anna (roles: accounting, support)\n", done
    first = stored(environment, "anna")
    assert first[b"kdf"] == b"scrypt" and first[b"n"] == b"16384" and PASSWORD.encode() not in b"".join(first.values())
    run(environment, "console-user", "add", "boris", "--roles", "admin", "--password-stdin", stdin=PASSWORD)
    listed = run(environment, "console-user", "list")
    assert listed.returncode == 0
    rows = [line.split("\t") for line in listed.stdout.splitlines()]
    assert [row[:2] for row in rows] == [["anna", "accounting,support"], ["boris", "admin"]]
    assert all(row[2].endswith("Z") for row in rows)

    done = run(environment, "console-user", "passwd", "anna", "--password-stdin", stdin="another password\n")
    assert done.returncode == 0 and "anna" in done.stdout
    assert stored(environment, "anna")[b"salt"] != first[b"salt"]
    done = run(environment, "console-user", "remove", "anna")
    assert done.returncode == 0 and stored(environment, "anna") == {}
    assert run(environment, "console-user", "list").stdout.startswith("boris\t")


ERRORS = {
    "taken": (["add", "boris", "--roles", "support", "--password-stdin"], PASSWORD, 1, "already exists"),
    "bad name": (["add", "Boris!", "--roles", "support", "--password-stdin"], PASSWORD, 2, "bad name 'Boris!'"),
    "bad role": (["add", "c", "--roles", "support,root", "--password-stdin"], PASSWORD, 2, "unknown roles root"),
    "short password": (["add", "c", "--roles", "support", "--password-stdin"], "short\n", 2, "at least 12"),
    "no terminal": (["add", "c", "--roles", "support"], PASSWORD, 2, "--password-stdin"),
    "remove unknown": (["remove", "nobody"], None, 1, "no account named 'nobody'"),
    "passwd unknown": (["passwd", "nobody", "--password-stdin"], PASSWORD, 1, "no account named 'nobody'"),
    "no action": ([], None, 2, "required: <action>"),
}


@pytest.mark.parametrize("case", list(ERRORS), ids=list(ERRORS))
def test_errors_are_one_line_with_their_exit_status(environment: dict[str, str], case: str) -> None:
    run(environment, "console-user", "add", "boris", "--roles", "admin", "--password-stdin", stdin=PASSWORD)
    args, stdin, code, expected = ERRORS[case]
    done = run(environment, "console-user", *args, stdin=stdin)
    assert_one_line_error(done, expected)
    assert done.returncode == code
    assert [line.split("\t")[0] for line in run(environment, "console-user", "list").stdout.splitlines()] == ["boris"]


def test_redis_is_needed_and_reached() -> None:
    assert_one_line_error(run(env(), "console-user", "list"), "billing console-user: needs BILLING_REDIS_URL")
    done = run(env(BILLING_REDIS_URL=unreachable_redis()), "audit", "export")
    assert_one_line_error(done, "billing audit: Redis unreachable (BILLING_REDIS_URL)")
    assert done.returncode == 2


def test_audit_export_writes_json_lines_oldest_first(environment: dict[str, str]) -> None:
    async def seed() -> None:
        client = Redis.from_url(environment["BILLING_REDIS_URL"])
        log = AuditLog(client, RedisKeys(environment["BILLING_REDIS_PREFIX"]), 1000)
        # An entry of 2020 (an explicit id, so older than the others), then two of now
        await client.xadd(
            log.key,
            {
                "time": "2020-01-01T00:00:00.000Z",
                "who": "x",
                "kind": "token",
                "page": "/console/users",
                "user_id": 8,
                "address": "::1",
            },
            id="1577836800000-0",
        )
        await log.record(Principal("anna", frozenset({"support"}), person=True), "/console/users", 7, "10.0.0.7")
        await log.record(Principal("0123456789ab", frozenset({"admin"})), "/console/users", 9, "127.0.0.1")
        await client.aclose()

    asyncio.run(seed())
    done = run(environment, "audit", "export")
    assert done.returncode == 0 and done.stderr == ""
    lines = [orjson.loads(line) for line in done.stdout.splitlines()]
    assert [line["user_id"] for line in lines] == [8, 7, 9]
    assert lines[1] == {**lines[1], "who": "anna", "kind": "person", "page": "/console/users", "address": "10.0.0.7"}
    assert lines[2]["who"] == "0123456789ab" and lines[2]["kind"] == "token"
    since = run(environment, "audit", "export", "--since", "2021-01-01T00:00:00Z")
    assert [orjson.loads(line)["user_id"] for line in since.stdout.splitlines()] == [7, 9]
    bad = run(environment, "audit", "export", "--since", "yesterday")
    assert_one_line_error(bad, "billing audit: --since must be an RFC 3339 timestamp")
    assert bad.returncode == 2
