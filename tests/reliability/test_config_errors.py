"""`billing serve` with a configuration it cannot run with exits at once with one clear line; a supervisor
whose workers keep dying before they serve gives up instead of restarting them forever."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap

import pytest
import redis

from billing.ledger.scripts import RedisKeys
from tests.support.servers import RedisServer, free_port
from tests.support.service import PROJECT_ROOT

GOOD = {
    "BILLING_REDIS_URL": "redis://127.0.0.1:1/0",  # never reached: the configuration is refused first
    "BILLING_MONGO_URL": "mongodb://127.0.0.1:1/?directConnection=true",
    "BILLING_TOKENS": '{"t": ["admin"]}',
    "BILLING_SECRET": "s",
    "BILLING_CONFIG_FILE": os.devnull,
    "BILLING_LOG_LEVEL": "WARNING",
}

BAD: dict[str, tuple[dict[str, str | None], str]] = {
    "tokens-not-json": ({"BILLING_TOKENS": "{nope"}, "tokens"),
    "tokens-unknown-role": ({"BILLING_TOKENS": '{"x": ["nope"]}'}, "BILLING_TOKENS"),
    "tokens-not-a-list": ({"BILLING_TOKENS": '{"x": "admin"}'}, "BILLING_TOKENS"),
    "redis-url-scheme": ({"BILLING_REDIS_URL": "http://127.0.0.1:6379"}, "BILLING_REDIS_URL"),
    "redis-url-port": ({"BILLING_REDIS_URL": "redis://127.0.0.1:port/0"}, "BILLING_REDIS_URL"),
    "mongo-url": ({"BILLING_MONGO_URL": "mongo://127.0.0.1"}, "BILLING_MONGO_URL"),
    "report-tz": ({"BILLING_REPORT_TZ": "Mars/Olympus"}, "BILLING_REPORT_TZ"),
    "ttl-not-a-number": ({"BILLING_IDEMPOTENCY_TTL_SECONDS": "soon"}, "BILLING_IDEMPOTENCY_TTL_SECONDS"),
    "ttl-zero": ({"BILLING_IDEMPOTENCY_TTL_SECONDS": "0"}, "BILLING_IDEMPOTENCY_TTL_SECONDS"),
    "timeout-negative": ({"BILLING_REQUEST_TIMEOUT_SECONDS": "-1"}, "BILLING_REQUEST_TIMEOUT_SECONDS"),
    "projector-batch-zero": ({"BILLING_PROJECTOR_BATCH": "0"}, "BILLING_PROJECTOR_BATCH"),
    "prefix-with-a-brace": ({"BILLING_REDIS_PREFIX": "billing{x}:"}, "BILLING_REDIS_PREFIX"),
    "partitions-zero": ({"BILLING_PARTITIONS": "0"}, "BILLING_PARTITIONS"),
    "partitions-too-many": ({"BILLING_PARTITIONS": "1025"}, "BILLING_PARTITIONS"),
    "embedded-stores-with-workers": ({"BILLING_REDIS_URL": None, "BILLING_MONGO_URL": None}, "--workers"),
}


def run_serve(env_changes: dict[str, str | None], workers: int, port: int) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **GOOD}
    for name, value in env_changes.items():
        if value is None:
            env.pop(name, None)
        else:
            env[name] = value
    command = [sys.executable, "-m", "billing", "serve", "--host", "127.0.0.1", "--port", str(port)]
    # (a supervisor restarting crashing workers forever would run into this timeout and fail the test)
    return subprocess.run(
        [*command, "--workers", str(workers)], env=env, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=60
    )


@pytest.mark.parametrize("workers", [1, 2])
@pytest.mark.parametrize("case", list(BAD), ids=list(BAD))
def test_a_bad_configuration_exits_with_one_line_and_binds_nothing(case: str, workers: int) -> None:
    changes, names = BAD[case]
    if case == "embedded-stores-with-workers" and workers == 1:
        pytest.skip("one worker may use the embedded stores")
    port = free_port()
    done = run_serve(changes, workers, port)
    assert done.returncode != 0
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, done.stderr
    assert "Traceback" not in done.stderr and names in lines[0], lines[0]
    assert done.stdout == ""
    with socket.socket() as sock:  # the port was never taken
        sock.bind(("127.0.0.1", port))


def test_a_supervisor_whose_workers_die_before_serving_gives_up() -> None:
    """Every worker fails in its start (here: a crash injected into run_worker): the supervisor exits 1."""
    port = free_port()
    script = textwrap.dedent(
        f"""
        import sys
        from billing.infra import metrics_dir
        metrics_dir.prepare(2)  # (as billing serve does, before prometheus_client is imported)
        import billing.server

        async def crash(*args, **kwargs):
            raise RuntimeError("injected start failure")

        billing.server.run_worker = crash
        from billing.cli import main
        main(["serve", "--host", "127.0.0.1", "--port", "{port}", "--workers", "2"])
        """
    )
    env = {**os.environ, **GOOD}
    done = subprocess.run(
        [sys.executable, "-c", script], env=env, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 1, done.stderr[-2000:]
    assert "giving up" in done.stderr
    assert done.stderr.count("injected start failure") < 20  # a handful of attempts, not an endless loop
    with socket.socket() as sock:  # and nothing holds the port any more
        sock.bind(("127.0.0.1", port))


@pytest.mark.parametrize("workers", [1, 2])
def test_serve_on_a_redis_laid_out_for_another_partition_count_exits_with_one_line(
    redis_server: RedisServer, workers: int
) -> None:
    """The partition count stored at the first start wins: workers refuse to start, the supervisor exits 1."""
    prefix = f"partitions-{free_port()}:"
    client = redis.Redis.from_url(redis_server.url)
    try:
        client.set(RedisKeys(prefix).partition_count, "8")
        changes: dict[str, str | None] = {"BILLING_REDIS_URL": redis_server.url, "BILLING_REDIS_PREFIX": prefix}
        done = run_serve(changes, workers=workers, port=free_port())
    finally:
        client.delete(RedisKeys(prefix).partition_count)
        client.close()
    assert done.returncode == 1, done.stderr[-2000:]
    refusals = [line for line in done.stderr.splitlines() if "BILLING_PARTITIONS is 16" in line]
    assert refusals and "ledger of 8 partitions" in refusals[0]
    assert "Traceback" not in done.stderr
