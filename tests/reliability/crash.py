"""One crash run: real Redis (AOF, fsync always), real `billing serve`, clients retrying, processes SIGKILLed."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import pymongo
import redis
import requests

from billing.core.config import MAX_PARTITIONS, default
from billing.ledger.scripts import RedisKeys
from tests.support.servers import RedisServer
from tests.support.service import PROJECT_ROOT, BillingProcess
from tests.support.workload import EXPIRING_SERVICE, Expected, Workload, expected_from, kopecks

TOKEN = "crash-payments-token"
ADMIN_TOKEN = "crash-admin-token"
TOKENS = {TOKEN: ["payments", "orders"], ADMIN_TOKEN: ["admin"]}
# The share of a client's turns that pay for an order and refund part of it (tests/support/workload.py).
ORDERS = 0.2
# A share of the operations reserve money with expires_in of 1 or 2 s and never close it: the sweepers of the
# workers (killed and restarted with everything else) must release each exactly once.
RESERVE_SHARE = 0.25
FAULT_CYCLE = ("service_kill", "redis_kill", "worker_kill", "redis_pause", "supervisor_kill")
# Redis commands time out after this long in the service; a pause outlasts it, so requests in flight
# get 503 while Redis still runs their scripts once it resumes (applied, not acknowledged).
REQUEST_TIMEOUT_SECONDS = 1.0


@dataclass
class CrashReport:
    """The figures of one run."""

    rounds: int
    clients: int
    faults: Counter = field(default_factory=Counter)
    stats: Counter = field(default_factory=Counter)
    operations: int = 0
    moved: int = 0
    refunded: int = 0  # kopecks refunded by acknowledged refunds
    acked_by_replay: int = 0
    transactions: int = 0
    lost: int = 0
    doubled: int = 0
    expired: int = 0
    history_checked: bool = False
    history_lost: int = 0
    history_doubled: int = 0
    reconcile_exit: int | None = None
    seconds: float = 0.0

    def summary(self) -> str:
        history = (
            f"history: lost {self.history_lost}, doubled {self.history_doubled}, reconcile exit {self.reconcile_exit}"
            if self.history_checked
            else "history: not checked (no `billing reconcile` yet)"
        )
        return (
            f"crash run: {self.rounds} rounds, {self.clients} clients, {self.seconds:.1f} s; "
            f"operations acknowledged {self.operations} (money moved {self.moved}, transactions {self.transactions}, "
            f"kopecks refunded {self.refunded}); "
            f"faults injected {sum(self.faults.values())} ({dict(self.faults)}); "
            f"requests {self.stats['requests']}, retries {self.stats['retries']} "
            f"(connection errors {self.stats['connection_errors']}, 503 {self.stats['unavailable_503']}), "
            f"acknowledged only by a replay {self.acked_by_replay}; reservations expired {self.expired}; "
            f"lost {self.lost}, doubled {self.doubled}; {history}"
        )


def command_exists(name: str) -> bool:
    """Whether `billing <name>` is a command of this checkout (argparse exits 2 on an unknown one)."""
    done = subprocess.run(
        [sys.executable, "-m", "billing", name, "--help"], cwd=PROJECT_ROOT, capture_output=True, timeout=60
    )
    return done.returncode == 0


class Faults:
    """Injects one fault at a time; every process comes back on its port (Redis on its AOF)."""

    def __init__(self, service: BillingProcess, redis_server: RedisServer, rng: random.Random) -> None:
        self.service = service
        self.redis = redis_server
        self.rng = rng
        self.counts: Counter = Counter()

    def inject(self, kind: str) -> None:
        if kind == "service_kill":
            self.service.kill_group()
            self.service.start(wait=False)
        elif kind == "supervisor_kill":
            # The supervisor alone (as the OOM killer would): its workers finish what they hold and exit.
            assert self.service.proc is not None
            workers = self.service.worker_pids()
            os.kill(self.service.proc.pid, signal.SIGKILL)
            self.service.proc.wait()
            deadline = time.monotonic() + 15
            while any(process_running(pid) for pid in workers):
                assert time.monotonic() < deadline, "workers outlived their supervisor"
                time.sleep(0.02)
            self.service.start(wait=False)
        elif kind == "redis_kill":
            self.redis.kill()
            time.sleep(self.rng.uniform(0.1, 0.6))  # requests meanwhile get 503
            self.redis.start()
        elif kind == "redis_pause":
            assert self.redis.proc is not None
            self.redis.proc.send_signal(signal.SIGSTOP)
            time.sleep(self.rng.uniform(1.3, 2.0))
            self.redis.proc.send_signal(signal.SIGCONT)
        elif kind == "worker_kill":
            deadline = time.monotonic() + 15
            while len(workers := self.service.worker_pids()) < self.service.workers:
                assert time.monotonic() < deadline, "the supervisor did not bring its workers up"
                time.sleep(0.05)
            os.kill(self.rng.choice(workers), signal.SIGKILL)  # the supervisor must start a new one
        self.counts[kind] += 1


def process_running(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, IndexError):
        return False


async def crash_run(
    redis_server: RedisServer, mongo_url: str, mongo_db: str, rounds: int, clients: int = 4, seed: int = 11
) -> CrashReport:
    """Traffic with faults for `rounds` rounds, then settle and check the ledger; returns the figures."""
    report = CrashReport(rounds=rounds, clients=clients)
    started = time.monotonic()
    rng = random.Random(seed)
    service = BillingProcess(
        redis_server.url,
        mongo_url,
        TOKENS,
        workers=2,
        mongo_db=mongo_db,
        extra_env={"BILLING_REQUEST_TIMEOUT_SECONDS": str(REQUEST_TIMEOUT_SECONDS)},
    ).start()
    workload = Workload(service.url, TOKEN, seed=seed, orders=ORDERS, reserve_share=RESERVE_SHARE)
    faults = Faults(service, redis_server, rng)
    stop = asyncio.Event()
    tasks = [asyncio.create_task(workload.run_client(i, stop)) for i in range(clients)]
    try:
        for n in range(rounds):
            await asyncio.sleep(rng.uniform(0.3, 0.8))  # traffic between faults
            await asyncio.to_thread(faults.inject, FAULT_CYCLE[n % len(FAULT_CYCLE)])
            _raise_if_failed(tasks)
        await asyncio.sleep(0.5)
        stop.set()
        # Every client finishes its operation in hand: retried until acknowledged, however long that takes.
        await asyncio.wait_for(asyncio.gather(*tasks), timeout=120)
        await asyncio.to_thread(_wait_ready, service)
        report.faults = faults.counts
        report.stats = workload.stats
        assert not workload.unexpected, f"answers outside the contract under faults: {workload.unexpected[:5]}"
        expected = expected_from(workload.acked)
        report.operations = len(workload.acked)
        report.moved = expected.moved
        report.refunded = expected.refunded
        report.acked_by_replay = sum(1 for a in workload.acked if a.replayed)
        report.expired = await asyncio.to_thread(check_expired, service, mongo_url, mongo_db, workload, expected)
        check_balances(service, redis_server, expected, workload.users, report)
        await check_replays(workload)
        if command_exists("reconcile"):
            check_history(service, mongo_url, mongo_db, expected, report)
        report.seconds = time.monotonic() - started
        return report
    finally:
        stop.set()
        for task in tasks:
            task.cancel()
        workload.close()
        service.stop()


def _raise_if_failed(tasks: list[asyncio.Task]) -> None:
    for task in tasks:
        if task.done() and task.exception() is not None:
            raise task.exception()  # type: ignore[misc]


def _wait_ready(service: BillingProcess, timeout: float = 20.0) -> None:
    """/readyz 200 again: the workers reconnected to the restarted Redis by themselves."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = requests.get(service.url + "/readyz", timeout=2)
            if last.status_code == 200:
                return
        except requests.RequestException as exc:
            last = exc
        time.sleep(0.1)
    raise AssertionError(f"service not ready after the faults: {getattr(last, 'text', last)}")


def check_expired(
    service: BillingProcess, mongo_url: str, mongo_db: str, workload: Workload, expected: Expected
) -> int:
    """Every acknowledged reservation (none is ever closed) is released once, as expired, by some worker's sweeper:
    each has exactly one release of its amount in the ledger, marked expired, and no account keeps money reserved.
    Their ids join the expected ones (the lost and doubled checks count every id of each partition; the reserves'
    are there already)."""
    reserved = {
        a.payload["order_id"]: a
        for a in workload.acked
        if a.op == "reserve" and a.payload["service_id"] == EXPIRING_SERVICE and a.status == 201
    }
    headers = {"Authorization": f"Bearer {TOKEN}"}
    deadline = time.monotonic() + 60
    while True:  # the last deadlines are at most 2 s away, and the sweepers look every 0.25 s
        balances = [
            requests.get(f"{service.url}/v1/users/{u}/balance", headers=headers, timeout=10) for u in range(1, 7)
        ]
        if all(b.status_code == 404 or b.json()["reserved"] == "0.00" for b in balances):
            break
        assert time.monotonic() < deadline, [b.text for b in balances]
        time.sleep(0.2)
    client = pymongo.MongoClient(mongo_url, serverSelectionTimeoutMS=5000)
    try:
        collection = client[mongo_db]["transactions"]
        query = {"type": "release", "service_id": EXPIRING_SERVICE, "order_id": {"$in": list(reserved)}}
        while collection.count_documents(query) < len(reserved) and time.monotonic() < deadline:
            time.sleep(0.2)
        releases = list(collection.find(query))
    finally:
        client.close()
    by_order = Counter(int(doc["order_id"]) for doc in releases)
    assert set(by_order) == set(reserved) and set(by_order.values()) <= {1}, by_order
    for doc in releases:
        acked = reserved[int(doc["order_id"])]
        assert doc.get("reason") == "expired" and int(doc["amount"]) == kopecks(acked.payload["amount"]), doc
    expected.transaction_ids.extend(int(doc["_id"]) for doc in releases)
    return len(releases)


def check_balances(
    service: BillingProcess, redis_server: RedisServer, expected: Expected, users: int, report: CrashReport
) -> None:
    """GET balance, the Redis totals hash and the transaction counter all agree with the acknowledged operations."""
    headers = {"Authorization": f"Bearer {TOKEN}"}
    for user in range(1, users + 1):
        answer = requests.get(f"{service.url}/v1/users/{user}/balance", headers=headers, timeout=10)
        if user not in expected.balances:
            assert answer.status_code == 404, (user, answer.text)
            continue
        assert answer.status_code == 200, answer.text
        body = answer.json()
        want = expected.balances[user]
        assert body["available"] == f"{want // 100}.{want % 100:02d}", (user, body, want)
        assert body["reserved"] == "0.00"
    keys = RedisKeys("billing:", default("partitions"))
    client = redis.Redis(port=redis_server.port)
    totals: Counter[str] = Counter()
    seqs: dict[int, int] = {}
    try:
        for partition in keys.all():
            totals.update({k.decode(): int(v) for k, v in client.hgetall(keys.totals(partition)).items()})
            seqs[partition] = int(client.hget(keys.meta(partition), "seq") or 0)
    finally:
        client.close()
    assert totals.get("deposited", 0) == expected.deposited, (totals, expected.deposited)
    assert totals.get("withdrawn", 0) == expected.withdrawn, (totals, expected.withdrawn)
    assert totals.get("revenue", 0) == expected.revenue, (totals, expected.revenue)
    assert totals.get("refunded", 0) == expected.refunded, (totals, expected.refunded)
    # every transfer was answered, so none is in transit: each one out of a partition came into one or back
    moved_in = totals.get("transfers_in", 0) + totals.get("transfers_reversed", 0)
    assert moved_in == totals.get("transfers_out", 0), totals
    ids = expected.transaction_ids
    # Transaction ids come from one counter per partition (id = seq * 1024 + partition): an acknowledged one
    # lost by Redis would be handed out again (a duplicate) or lie above its partition's counter; one applied
    # twice would leave a number nobody was answered with.
    report.transactions = len(ids)
    report.lost = len(ids) - len(set(ids))
    report.doubled = 0
    for partition, seq in seqs.items():
        last = seq * MAX_PARTITIONS + partition
        mine = {i for i in ids if i % MAX_PARTITIONS == partition}
        report.lost += sum(1 for i in mine if i > last)
        report.doubled += seq - len({i for i in mine if i <= last})
    assert report.lost == 0 and report.doubled == 0, (report.lost, report.doubled, seqs, len(ids))


async def check_replays(workload: Workload) -> None:
    """Each acknowledged operation sent again with its key: the same answer, marked replayed, nothing moves."""
    sem = asyncio.Semaphore(16)

    async def again(acked: Any) -> None:
        async with sem:
            status, headers, body = await workload.post(acked.path, acked.payload, acked.key)
        assert status == acked.status, (acked.key, status, body)
        assert headers.get("Idempotent-Replayed") == "true", acked.key
        assert orjson.loads(body) == acked.body, acked.key

    await asyncio.gather(*(again(a) for a in workload.acked))


def check_history(
    service: BillingProcess, mongo_url: str, mongo_db: str, expected: Expected, report: CrashReport
) -> None:
    """Every acknowledged transaction once in MongoDB `transactions`, and `billing reconcile` agrees."""
    report.history_checked = True
    client = pymongo.MongoClient(mongo_url, serverSelectionTimeoutMS=5000)
    try:
        collection = client[mongo_db]["transactions"]
        want = set(expected.transaction_ids)
        deadline = time.monotonic() + 60
        while collection.count_documents({}) < len(want) and time.monotonic() < deadline:
            time.sleep(0.2)
        ids = [doc["_id"] for doc in collection.find({}, {"_id": 1})]
    finally:
        client.close()
    report.history_lost = len(want - set(ids))
    report.history_doubled = (len(ids) - len(set(ids))) + len(set(ids) - want)
    assert report.history_lost == 0 and report.history_doubled == 0, (report.history_lost, report.history_doubled)
    done = subprocess.run(
        [sys.executable, "-m", "billing", "reconcile"],
        env=service.env,
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    report.reconcile_exit = done.returncode
    assert done.returncode == 0, done.stdout + done.stderr
