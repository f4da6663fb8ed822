"""The pre-fork supervisor of `billing serve --workers 2`: workers are replaced, and never outlive it."""

from __future__ import annotations

import os
import signal
import time
import uuid
from collections.abc import Iterator

import pytest
import requests

from tests.reliability.crash import TOKENS, process_running
from tests.support.servers import MongoWireServer, RedisServer
from tests.support.service import BillingProcess

HEADERS = {"Authorization": "Bearer crash-admin-token"}


def deposit(service: BillingProcess, user_id: int) -> int:
    body = {"user_id": user_id, "amount": "1.00"}
    return requests.post(service.url + "/v1/deposits", json=body, headers=HEADERS, timeout=10).status_code


@pytest.fixture
def service(redis_server: RedisServer, mongo_server: MongoWireServer) -> Iterator[BillingProcess]:
    run = uuid.uuid4().hex[:8]
    process = BillingProcess(
        redis_server.url,
        mongo_server.url,
        TOKENS,
        workers=2,
        mongo_db=f"sup_{run}",  # a ledger of its own: a Redis prefix without its transactions is a Redis that lost data
        extra_env={"BILLING_REDIS_PREFIX": f"sup:{run}:"},
    ).start()
    yield process
    process.stop()


def test_a_killed_worker_is_replaced(service: BillingProcess) -> None:
    before = service.worker_pids()
    assert len(before) == 2
    os.kill(before[0], signal.SIGKILL)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        now = service.worker_pids()
        if len(now) == 2 and before[0] not in now:
            break
        time.sleep(0.05)
    assert len(now) == 2 and before[0] not in now and before[1] in now
    for _ in range(10):  # both workers answer (new connections land on either)
        assert deposit(service, 1) == 201


def test_workers_exit_with_a_killed_supervisor_and_the_port_is_free_again(service: BillingProcess) -> None:
    workers = service.worker_pids()
    assert len(workers) == 2
    os.kill(service.proc.pid, signal.SIGKILL)  # the supervisor alone, as the OOM killer would
    service.proc.wait()
    deadline = time.monotonic() + 15
    while any(process_running(pid) for pid in workers) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(process_running(pid) for pid in workers), "orphaned workers kept running without their supervisor"
    service.start()  # same port: nothing holds it any more
    assert len(service.worker_pids()) == 2
    assert deposit(service, 2) == 201
