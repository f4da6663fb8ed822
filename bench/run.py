"""`make bench`: the service against the floor app, alternating wrk rounds, batch throughput and memory; then
the projector's CPU per transaction (bench/projector_bench.py) and the write path on a local Redis Cluster
(bench/cluster.py).

Starts its own redis-server and SecantusDB on free ports, the floor app and `billing serve` with the same
worker count, and sends traffic to 127.0.0.1 only, for a bounded time. Prints a table and writes
bench/RESULTS.md (every round) and the marked part of docs/performance.md (the targets as measured, what limits
each, the machine). `--quick` is the short form for CI, which leaves docs/performance.md as it is.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shlex
import signal
import statistics
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import orjson
import redis

from bench import machine, profile, report
from bench.batchload import build_bodies, run_batches
from bench.cluster import run_cluster
from bench.procs import (
    BENCH_TOKEN,
    FLOOR_PATHS,
    SERVICE_PATHS,
    USERS,
    Served,
    process_cpu_seconds,
    start_floor,
    start_service,
)
from bench.projector_bench import projection_costs
from bench.wrkrun import PacedResult, WrkResult, run_closed, run_paced, wrk_version
from billing.core.config import default
from billing.ledger.scripts import RedisKeys
from tests.support.servers import MongoWireServer, RedisServer

PROJECTOR_DEPOSITS = 3000  # per drain of bench.projector_bench's rounds (a cold drain, then the warm one measured)
PREFIX: str = default("redis_prefix")  # the service's own BILLING_REDIS_PREFIX


@dataclass
class Results:
    """Everything measured in one run, raw, for the report."""

    args: argparse.Namespace
    machine: dict[str, str]
    load_before: str = ""
    load_after: str = ""
    stolen: float = 0.0  # the share of CPU time the hypervisor took over the whole run (machine.stolen_since)
    rounds: dict[str, list[WrkResult]] = field(default_factory=dict)  # "floor post", "service get", ...
    paced: dict[str, list[PacedResult]] = field(default_factory=dict)  # "floor post" -> one per round
    batch: object = None
    redis_us_per_deposit: float = 0.0
    batch_cpu_us: tuple[float, float, float] = (0.0, 0.0, 0.0)  # per operation: workers, Redis, SecantusDB
    rss: dict[int, list[int]] = field(default_factory=dict)  # worker pid -> KiB samples
    soak_seconds: float = 0.0
    redis_pid: int = 0
    profile_layers: list = field(default_factory=list)
    profile_functions: list = field(default_factory=list)
    profile_note: str = ""
    mongo_pid: int = 0
    mongo_paused: bool = True
    projection_us: list[tuple[float, float]] = field(default_factory=list)  # per entry: workers, SecantusDB
    projection_costs: list = field(default_factory=list)  # bench.projector_bench.ProjectionCost, single and batched
    cluster_runs: list = field(default_factory=list)  # bench.cluster.Run, single and batch


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="short runs (CI): 3 s rounds, 10 s memory run")
    parser.add_argument(
        "--rounds",
        type=int,
        default=9,
        help="alternating floor/service rounds (medians taken): many short rounds, so that each floor run and its "
        "service run lie close in time on a machine whose speed drifts",
    )
    parser.add_argument("--seconds", type=float, default=None, help="length of each wrk round (default 5, quick 3)")
    parser.add_argument("--soak", type=float, default=None, help="length of the memory run (published: 60)")
    parser.add_argument("--paced-rounds", type=int, default=3, help="alternating paced rounds (median p99 taken)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument(
        "--mongo",
        choices=["paused", "running"],
        default="paused",
        help="the SecantusDB stand-in for MongoDB during measured service runs: paused (SIGSTOP: it takes none of "
        "the 2 cores, as a MongoDB on its own host; the projection completes after each run) or running",
    )
    parser.add_argument(
        "--cluster-rounds", type=int, default=3, help="alternating single/batch runs on a local Redis Cluster (0: none)"
    )
    parser.add_argument(
        "--projector-rounds",
        type=int,
        default=3,
        help="rounds of the projector's CPU per transaction, single and batched writes (0: none)",
    )
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--output", type=Path, default=Path(__file__).resolve().parent / "RESULTS.md")
    parser.add_argument(
        "--doc",
        type=Path,
        default=Path(__file__).resolve().parent.parent / "docs" / "performance.md",
        help="the document whose marked part a full run writes (report.DOC_BEGIN .. DOC_END); --quick leaves it",
    )
    parser.add_argument("--no-write", action="store_true", help="print the table only")
    parser.add_argument(
        "--only",
        choices=["batch", "closed"],
        default=None,
        help="run one part alone and print it (no RESULTS.md): batch = POST /v1/batch throughput and CPU per op; "
        "closed = the alternating maximum-rate rounds and the service/floor ratios",
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
        args.seconds = 3.0 if args.quick else 5.0
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
    # One deposit per user (one batch), not batches for 30 s: those left an outbox backlog of 100,000s of
    # entries that the workers' projectors then worked off during the rounds, charging it to them.
    body = build_bodies(1, USERS, f"seed-{uuid.uuid4().hex[:8]}", USERS)[0]
    request = urllib.request.Request(
        service.url + "/v1/batch",
        data=body,
        method="POST",
        headers={"Authorization": f"Bearer {BENCH_TOKEN}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        results = orjson.loads(response.read())["results"]
    if len(results) != USERS or any(item["status"] != 201 for item in results):
        raise RuntimeError("seeding the service failed")
    wait_projected(redis_url)


def wait_projected(redis_url: str, timeout: float = 120.0) -> None:
    """Until the outbox projector has caught up, so no round pays for projecting an earlier one's deposits.

    Asks Redis (the consumer group's lag and pending count), not the service, whose CPU is being measured.
    """
    client = redis.Redis.from_url(redis_url)
    keys = RedisKeys(PREFIX, default("partitions"))
    deadline = time.monotonic() + timeout
    state: dict[str, object] = {}
    try:
        while time.monotonic() < deadline:
            behind = {}
            for partition in keys.all():
                stream = keys.outbox(partition)
                if not client.exists(stream):
                    continue
                last = client.xinfo_stream(stream)["last-generated-id"]
                groups = client.xinfo_groups(stream)
                if not all(g["pending"] == 0 and g["last-delivered-id"] == last for g in groups):
                    behind[stream] = {"last-generated-id": last, "groups": groups}
            if not behind:
                return
            state = behind
            time.sleep(0.1)
    finally:
        client.close()
    raise RuntimeError(f"the outbox projector did not catch up within {timeout} s: {state}")


@contextlib.contextmanager
def mongo_paused(results: Results) -> Iterator[None]:
    """SIGSTOP the MongoDB stand-in for a measured run (see --mongo), SIGCONT after, whatever happens."""
    if not results.mongo_paused:
        yield
        return
    os.kill(results.mongo_pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(results.mongo_pid, signal.SIGCONT)


def closed_rounds(args: argparse.Namespace, redis_url: str, floor: Served, service: Served, results: Results) -> None:
    run_id = uuid.uuid4().hex[:8]
    for number in range(args.rounds):
        for mode in ("post", "get", "many"):
            order = [("floor", floor, FLOOR_PATHS), ("service", service, SERVICE_PATHS)]
            if number % 2:
                order.reverse()  # neither side always runs first
            if mode == "many":  # GET /v1/balances, 100 ids: the floor has no such read (compared to its GET)
                order = [side for side in order if side[1] is service]
            for name, target, paths in order:
                if target is service:
                    wait_projected(redis_url)
                cpu_before, redis_before = target.cpu_seconds(), process_cpu_seconds(results.redis_pid)
                with mongo_paused(results):
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
                if target is service and mode == "post":
                    # projecting this round's deposits is part of their cost: counted in CPU per request
                    run_cpu, mongo_before = target.cpu_seconds(), process_cpu_seconds(results.mongo_pid)
                    wait_projected(redis_url)
                    if result.requests:
                        results.projection_us.append(
                            (
                                1e6 * (target.cpu_seconds() - run_cpu) / result.requests,
                                1e6 * (process_cpu_seconds(results.mongo_pid) - mongo_before) / result.requests,
                            )
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


def print_ratios(results: Results) -> None:
    """Median service rate over median floor rate, per mode, and the same for CPU per request."""
    for mode in ("post", "get"):
        floor, service = results.rounds[f"floor {mode}"], results.rounds[f"service {mode}"]
        floor_rate, service_rate = statistics.median(r.rate for r in floor), statistics.median(r.rate for r in service)
        floor_cpu, service_cpu = (
            statistics.median(r.cpu_us for r in floor),
            statistics.median(r.cpu_us for r in service),
        )
        print(
            f"  {mode}: service/floor {service_rate / floor_rate:.2f} ({service_rate:.0f} vs {floor_rate:.0f} req/s); "
            f"CPU ratio {floor_cpu / service_cpu:.2f} ({service_cpu:.0f} vs {floor_cpu:.0f} us per request)",
            flush=True,
        )


def paced_runs(args: argparse.Namespace, redis_url: str, floor: Served, service: Served, results: Results) -> None:
    """Each side at half the service's maximum: the service's p99 is the target, the floor's what this machine
    gives a bare Tornado + Redis app at the same rate."""
    for number, mode in [(n, m) for n in range(args.paced_rounds) for m in ("post", "get")]:
        top = statistics.median(r.rate for r in results.rounds[f"service {mode}"])
        rate = max(10.0, top / 2)
        order = [("floor", floor, FLOOR_PATHS), ("service", service, SERVICE_PATHS)]
        for name, target, paths in order[:: -1 if number % 2 else 1]:
            wait_projected(redis_url)  # no backlog of an earlier run is projected during this one
            with mongo_paused(results):
                result = run_paced(
                    target.url,
                    mode,
                    paths,
                    BENCH_TOKEN,
                    f"paced-{uuid.uuid4().hex[:8]}",
                    rate=rate,
                    seconds=args.seconds * 3,  # a p99 wants more samples than a rate
                    users=USERS,
                )
            results.paced.setdefault(f"{name} {mode}", []).append(result)
            print(
                f"  paced {name} {mode} at {rate:.0f} req/s: p50 {result.p50:.2f} p99 {result.p99:.2f} ms "
                f"(achieved {result.achieved_rate:.0f} req/s, failures {result.failures})",
                flush=True,
            )


def competing_round(args: argparse.Namespace, redis_url: str, service: Served, results: Results) -> None:
    """One POST round with the MongoDB stand-in running: its projection work shares the 2 cores (reference)."""
    wait_projected(redis_url)
    result = run_closed(
        service.url,
        "post",
        SERVICE_PATHS,
        BENCH_TOKEN,
        f"competing-{uuid.uuid4().hex[:8]}",
        seconds=args.seconds,
        connections=args.connections,
        users=USERS,
    )
    wait_projected(redis_url)
    results.rounds["service post, SecantusDB running"] = [result]
    print(f"  service post with SecantusDB running: {result.rate:.1f} req/s  p99 {result.p99:.2f} ms", flush=True)


def batch_run(args: argparse.Namespace, redis_url: str, service: Served, results: Results, mongo_pid: int = 0) -> None:
    client = redis.Redis.from_url(redis_url)
    client.config_resetstat()
    before = (service.cpu_seconds(), process_cpu_seconds(results.redis_pid), process_cpu_seconds(mongo_pid))
    with mongo_paused(results):
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
    stats = client.info("commandstats").get("cmdstat_fcall", {})
    calls = max(1, int(stats.get("calls", 0)))
    results.redis_us_per_deposit = float(stats.get("usec", 0.0)) / max(calls, ops)
    client.close()
    worker_us, redis_us, mongo_us = results.batch_cpu_us
    print(
        f"  batch: {results.batch.ops_per_second:.0f} ops/s ({results.batch.operations} ops, "
        f"failures {results.batch.failures}); CPU per op: workers {worker_us:.1f} us, Redis {redis_us:.1f} us, "
        f"SecantusDB (projection) {mongo_us:.1f} us, the load generator {results.batch.client_cpu_us:.1f} us; scripts "
        f"{results.redis_us_per_deposit:.1f} us per deposit ({calls} FCALL calls)",
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
    results.load_before, ticks = machine.load_average(), machine.cpu_ticks()
    print(
        f"bench: {args.workers} workers, {args.connections} connections, {args.rounds} rounds of "
        f"{args.seconds:.0f} s, memory run {args.soak:.0f} s; load average {results.load_before}",
        flush=True,
    )
    logs = tempfile.TemporaryDirectory(prefix="billing-bench-")
    redis_server = RedisServer().start()
    results.redis_pid = redis_server.proc.pid
    mongo_server = MongoWireServer().start()
    results.mongo_pid, results.mongo_paused = mongo_server.proc.pid, args.mongo == "paused"
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
                results.mongo_paused = False  # alone, the batch run measures its projection too
                batch_run(args, redis_server.url, service, results, mongo_server.proc.pid)
                return 0
            seed(redis_server.url, service)
            try:
                closed_rounds(args, redis_server.url, floor, service, results)
                if args.only == "closed":
                    print_ratios(results)
                    return 0
                paced_runs(args, redis_server.url, floor, service, results)
                competing_round(args, redis_server.url, service, results)
                # The last two leave their projection undone (with SecantusDB paused, working off a batch run's
                # backlog would take minutes here): their CPU per operation is without projection.
                batch_run(args, redis_server.url, service, results, mongo_server.proc.pid)
                with mongo_paused(results):
                    soak(args, service, results)
            except RuntimeError:  # (a projection that did not catch up): what the service said
                log.flush()
                tail = (Path(logs.name) / "service.log").read_text(errors="replace").splitlines()[-40:]
                print("the service's log, last lines:", *tail, sep="\n  ", file=sys.stderr)
                raise
        for served in reversed(started):  # the projector and cluster parts run with the machine to themselves
            served.stop()
        started.clear()
        if args.projector_rounds:
            results.projection_costs = asyncio.run(
                projection_costs(
                    redis_server.url,
                    mongo_server.url,
                    mongo_server.proc.pid,
                    PROJECTOR_DEPOSITS // (3 if args.quick else 1),
                    args.projector_rounds,
                )
            )
            for cost in results.projection_costs:
                print(f"  projector, {cost.writes} writes: {cost.projector_us:.1f} us ({cost.own_us:.1f} its own)")
    finally:
        for served in reversed(started):
            served.stop()
        mongo_server.stop()
        redis_server.stop()
        logs.cleanup()
    if args.cluster_rounds:
        results.cluster_runs = run_cluster(args.cluster_rounds, args.seconds)
    results.load_after, results.stolen = machine.load_average(), machine.stolen_since(ticks)
    command = "make bench" if argv is None and not sys.argv[1:] else "python -m bench.run " + shlex.join(sys.argv[1:])
    text = report.render(results, command)
    print(text)
    if not args.no_write:
        args.output.write_text(text)
        print(f"written to {args.output}")
        if not args.quick:  # (a short run's figures are not the published ones)
            args.doc.write_text(report.write_block(args.doc.read_text(), report.performance_block(results, command)))
            print(f"written to {args.doc}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
