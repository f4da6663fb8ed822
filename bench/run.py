"""`make bench`: the service against the floor app, alternating wrk rounds, batch throughput and memory.

Starts its own redis-server and SecantusDB on free ports, the floor app and `billing serve` with the same
worker count, and sends traffic to 127.0.0.1 only, for a bounded time. Prints a table and writes
bench/RESULTS.md. `--quick` is the short form for CI; the published figures come from a full run.
"""

from __future__ import annotations

import argparse
import shlex
import statistics
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import redis

from bench import machine, profile, report
from bench.batchload import run_batches
from bench.procs import BENCH_TOKEN, Served, process_cpu_seconds, start_floor, start_service
from bench.wrkrun import PacedResult, WrkResult, run_closed, run_paced, wrk_version
from tests.support.servers import MongoWireServer, RedisServer

FLOOR_PATHS = {"post": "/deposit", "get": "/balance/%d"}
SERVICE_PATHS = {"post": "/v1/deposits", "get": "/v1/users/%d/balance"}
USERS = 1000


@dataclass
class Results:
    """Everything measured in one run, raw, for the report."""

    args: argparse.Namespace
    machine: dict[str, str]
    load_before: str = ""
    load_after: str = ""
    rounds: dict[str, list[WrkResult]] = field(default_factory=dict)  # "floor post", "service get", ...
    paced: dict[str, PacedResult] = field(default_factory=dict)
    batch: object = None
    redis_us_per_deposit: float = 0.0
    batch_cpu_us: tuple[float, float, float] = (0.0, 0.0, 0.0)  # per operation: workers, Redis, SecantusDB
    rss: dict[int, list[int]] = field(default_factory=dict)  # worker pid -> KiB samples
    soak_seconds: float = 0.0
    redis_pid: int = 0
    profile_layers: list = field(default_factory=list)
    profile_functions: list = field(default_factory=list)
    profile_note: str = ""


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="short runs (CI): 3 s rounds, 10 s memory run")
    parser.add_argument("--rounds", type=int, default=3, help="alternating floor/service rounds (median taken)")
    parser.add_argument("--seconds", type=float, default=None, help="length of each wrk round")
    parser.add_argument("--soak", type=float, default=None, help="length of the memory run (published: 60)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--output", type=Path, default=Path(__file__).resolve().parent / "RESULTS.md")
    parser.add_argument("--no-write", action="store_true", help="print the table only")
    parser.add_argument(
        "--only",
        choices=["batch"],
        default=None,
        help="run one part alone and print it (no RESULTS.md): batch = POST /v1/batch throughput and CPU per op",
    )
    parser.add_argument(
        "--service-env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra environment for the service, e.g. BILLING_LOG_LEVEL=WARNING (no per-request access log)",
    )
    args = parser.parse_args(argv)
    if args.seconds is None:
        args.seconds = 3.0 if args.quick else 10.0
    if args.soak is None:
        args.soak = 10.0 if args.quick else 60.0
    return args


def seed(redis_url: str, service: Served) -> None:
    """Accounts for every user id the load touches, so GETs read real balances on both sides."""
    client = redis.Redis.from_url(redis_url)
    pipe = client.pipeline(transaction=False)
    for user in range(1, USERS + 1):
        pipe.hset(f"floor:{{u:{user}}}:acct", mapping={"available": 100, "reserved": 0})
    pipe.execute()
    client.close()
    result = run_batches(service.url, BENCH_TOKEN, f"seed-{uuid.uuid4().hex[:8]}", seconds=30, concurrency=1)
    if result.failures or result.operations < USERS:
        raise RuntimeError(f"seeding the service failed: {result}")


def closed_rounds(args: argparse.Namespace, floor: Served, service: Served, results: Results) -> None:
    run_id = uuid.uuid4().hex[:8]
    for number in range(args.rounds):
        for mode in ("post", "get"):
            order = [("floor", floor, FLOOR_PATHS), ("service", service, SERVICE_PATHS)]
            if number % 2:
                order.reverse()  # neither side always runs first
            for name, target, paths in order:
                cpu_before, redis_before = target.cpu_seconds(), process_cpu_seconds(results.redis_pid)
                result = run_closed(
                    target.url,
                    mode,
                    paths,
                    BENCH_TOKEN,
                    f"{run_id}-{number}",
                    seconds=args.seconds,
                    connections=args.connections,
                    users=USERS,
                )
                if result.requests:
                    result.cpu_us = 1e6 * (target.cpu_seconds() - cpu_before) / result.requests
                    result.redis_cpu_us = (
                        1e6 * (process_cpu_seconds(results.redis_pid) - redis_before) / result.requests
                    )
                results.rounds.setdefault(f"{name} {mode}", []).append(result)
                print(
                    f"  round {number + 1} {name:7} {mode:4} {result.rate:9.1f} req/s  p99 {result.p99:7.2f} ms"
                    f"  CPU/request {result.cpu_us:6.0f} us + Redis {result.redis_cpu_us:4.0f} us  failures {result.failures}",
                    flush=True,
                )


def paced_runs(args: argparse.Namespace, service: Served, results: Results) -> None:
    for mode in ("post", "get"):
        top = statistics.median(r.rate for r in results.rounds[f"service {mode}"])
        rate = max(10.0, top / 2)
        result = run_paced(
            service.url,
            mode,
            SERVICE_PATHS,
            BENCH_TOKEN,
            f"paced-{uuid.uuid4().hex[:8]}",
            rate=rate,
            seconds=max(5.0, args.seconds * 1.5),
            users=USERS,
        )
        results.paced[f"service {mode}"] = result
        print(
            f"  paced service {mode} at {rate:.0f} req/s: p50 {result.p50:.2f} p99 {result.p99:.2f} ms "
            f"(achieved {result.achieved_rate:.0f} req/s, failures {result.failures})",
            flush=True,
        )


def batch_run(
    args: argparse.Namespace, redis_url: str, service: Served, results: Results, mongo_pid: int = 0
) -> None:
    client = redis.Redis.from_url(redis_url)
    client.config_resetstat()
    before = (service.cpu_seconds(), process_cpu_seconds(results.redis_pid), process_cpu_seconds(mongo_pid))
    results.batch = run_batches(
        service.url,
        BENCH_TOKEN,
        f"batch-{uuid.uuid4().hex[:8]}",
        seconds=max(5.0, args.seconds * 1.5),
        concurrency=2 * args.workers,
        users=USERS,
    )
    after = (service.cpu_seconds(), process_cpu_seconds(results.redis_pid), process_cpu_seconds(mongo_pid))
    ops = max(1, results.batch.operations)
    results.batch_cpu_us = tuple(1e6 * (a - b) / ops for a, b in zip(after, before, strict=True))
    stats = client.info("commandstats").get("cmdstat_evalsha", {})
    calls = max(1, int(stats.get("calls", 0)))
    results.redis_us_per_deposit = float(stats.get("usec", 0.0)) / max(calls, ops)
    client.close()
    worker_us, redis_us, mongo_us = results.batch_cpu_us
    print(
        f"  batch: {results.batch.ops_per_second:.0f} ops/s ({results.batch.operations} ops, "
        f"failures {results.batch.failures}); CPU per op: workers {worker_us:.1f} us, Redis {redis_us:.1f} us, "
        f"SecantusDB (projection) {mongo_us:.1f} us; scripts {results.redis_us_per_deposit:.1f} us per deposit "
        f"({calls} EVALSHA calls)",
        flush=True,
    )


def soak(args: argparse.Namespace, service: Served, results: Results) -> None:
    """Maximum-rate deposits for args.soak seconds while sampling each worker's RSS once a second."""
    outcome: list[WrkResult] = []
    load = threading.Thread(
        target=lambda: outcome.append(
            run_closed(
                service.url,
                "post",
                SERVICE_PATHS,
                BENCH_TOKEN,
                f"soak-{uuid.uuid4().hex[:8]}",
                seconds=args.soak,
                connections=args.connections,
                users=USERS,
            )
        )
    )
    start = time.monotonic()
    cpu_before, redis_before = service.cpu_seconds(), process_cpu_seconds(results.redis_pid)
    load.start()
    spy = threading.Thread(target=_profile, args=(service.worker_pids()[0], min(20.0, args.soak * 0.5), results))
    spy.start()
    while load.is_alive():
        for pid, kib in service.rss_kib().items():
            results.rss.setdefault(pid, []).append(kib)
        load.join(timeout=1.0)
    results.soak_seconds = time.monotonic() - start
    spy.join()
    if outcome and outcome[0].requests:
        outcome[0].cpu_us = 1e6 * (service.cpu_seconds() - cpu_before) / outcome[0].requests
        outcome[0].redis_cpu_us = 1e6 * (process_cpu_seconds(results.redis_pid) - redis_before) / outcome[0].requests
        results.rounds["service soak"] = outcome
    print(
        "  memory: " + ", ".join(f"worker {pid} {s[0] // 1024}->{s[-1] // 1024} MiB" for pid, s in results.rss.items())
    )


def _profile(pid: int, seconds: float, results: Results) -> None:
    """py-spy on one worker during the memory run (deposits at the maximum rate)."""
    time.sleep(1.0)
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "profile.txt"
        if not profile.record(pid, seconds, raw):
            results.profile_note = "py-spy not available or not permitted: no profile"
            return
        results.profile_layers, results.profile_functions = profile.summarize(raw)
        results.profile_note = (
            f"py-spy --gil, {seconds:.0f} s at 250 Hz on one worker during the memory run (deposits at max rate)"
        )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    results = Results(args=args, machine=machine.describe(wrk_version()))
    results.load_before = machine.load_average()
    print(
        f"bench: {args.workers} workers, {args.connections} connections, {args.rounds} rounds of "
        f"{args.seconds:.0f} s, memory run {args.soak:.0f} s; load average {results.load_before}",
        flush=True,
    )
    logs = tempfile.TemporaryDirectory(prefix="billing-bench-")
    redis_server = RedisServer().start()
    results.redis_pid = redis_server.proc.pid
    mongo_server = MongoWireServer().start()
    started: list[Served] = []
    try:
        with open(Path(logs.name) / "floor.log", "wb") as floor_log, open(Path(logs.name) / "service.log", "wb") as log:
            floor = start_floor(redis_server.url, args.workers, floor_log)
            started.append(floor)
            extra = dict(item.split("=", 1) for item in args.service_env)
            service = start_service(redis_server.url, mongo_server.url, args.workers, log, extra)
            started.append(service)
            floor.wait_ready(args.workers)
            service.wait_ready(args.workers)
            if args.only == "batch":
                batch_run(args, redis_server.url, service, results, mongo_server.proc.pid)
                return 0
            seed(redis_server.url, service)
            closed_rounds(args, floor, service, results)
            paced_runs(args, service, results)
            batch_run(args, redis_server.url, service, results, mongo_server.proc.pid)
            soak(args, service, results)
    finally:
        for served in reversed(started):
            served.stop()
        mongo_server.stop()
        redis_server.stop()
        logs.cleanup()
    results.load_after = machine.load_average()
    command = "make bench" if argv is None and not sys.argv[1:] else "python -m bench.run " + shlex.join(sys.argv[1:])
    text = report.render(results, command)
    print(text)
    if not args.no_write:
        args.output.write_text(text)
        print(f"written to {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
