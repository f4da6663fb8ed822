"""The write path on a local Redis Cluster: deposits per second, single and in batches, and each node's CPU per
deposit, for the capacity plan in docs/scaling.md.

Starts its own LocalCluster (3 masters, 3 replicas, tests/support/redis_cluster.py), SecantusDB and
`billing serve --workers 2` with BILLING_REDIS_MODE=cluster, 16 partitions and the projector off (this measures
the ledger's writes, and SecantusDB stays idle; bench.run measures projection). Then `--rounds` closed-loop
runs of POST /v1/deposits with wrk (32 connections, a unique Idempotency-Key each, 1000 users) and as many runs
of POST /v1/batch of 1000 deposits (bench/batchload.py, 4 senders), each `--seconds` long. Per run: the rate,
the workers' CPU per deposit and each node's (masters and replicas: a replica applies its master's writes).
Everything shares this machine's cores: the figures that transfer to other machines are the CPU per deposit.
`make bench` (bench/run.py) runs the same after its own parts and reports it in bench/RESULTS.md.

    .venv/bin/python -m bench.cluster [--rounds 3] [--seconds 5] [--wait-replicas 0]
"""

from __future__ import annotations

import argparse
import shlex
import statistics
import sys
import tempfile
import uuid
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

from bench.batchload import run_batches
from bench.procs import BENCH_TOKEN, SERVICE_PATHS, USERS, Served, process_cpu_seconds, start_service
from bench.wrkrun import run_closed
from tests.support.redis_cluster import LocalCluster
from tests.support.servers import MongoWireServer

PARTITIONS = 16


@dataclass
class Run:
    kind: str  # "single" or "batch"
    rate: float  # deposits per second
    deposits: int
    failures: int
    workers_us: float  # workers' CPU per deposit
    node_us: dict[str, float] = field(default_factory=dict)  # "master 127.0.0.1:port" -> CPU µs per deposit
    commands: dict[str, float] = field(default_factory=dict)  # command -> calls per deposit, on all masters


def measure(kind: str, cluster: LocalCluster, service: Served, seconds: float) -> Run:
    masters = cluster.masters()  # (each call asks a node for CLUSTER NODES)
    nodes = {f"{'master' if node in masters else 'replica'} {node.name}": node for node in cluster.nodes}
    pids = {name: node.server.proc.pid for name, node in nodes.items() if node.server.proc is not None}
    before = {name: process_cpu_seconds(pid) for name, pid in pids.items()}
    calls_before = _calls(cluster)
    workers_before = service.cpu_seconds()
    run_id = f"{kind}-{uuid.uuid4().hex[:8]}"
    if kind == "single":
        result = run_closed(
            service.url, "post", SERVICE_PATHS, BENCH_TOKEN, run_id, seconds=seconds, connections=32, users=USERS
        )
        rate, deposits, failures = result.rate, result.requests, result.failures
    else:
        batch = run_batches(service.url, BENCH_TOKEN, run_id, seconds=seconds, concurrency=4, users=USERS)
        rate, deposits, failures = batch.ops_per_second, batch.operations, batch.failures
    per = 1e6 / max(1, deposits)
    calls = _calls(cluster)
    return Run(
        kind,
        rate,
        deposits,
        failures,
        (service.cpu_seconds() - workers_before) * per,
        {name: (process_cpu_seconds(pid) - before[name]) * per for name, pid in sorted(pids.items())},
        {command: (count - calls_before.get(command, 0)) / max(1, deposits) for command, count in calls.items()},
    )


def _calls(cluster: LocalCluster) -> dict[str, int]:
    """Calls of each command so far, summed over the masters (INFO commandstats; a function's or script's own
    redis.call()s included, as Redis counts them)."""
    total: dict[str, int] = {}
    for node in cluster.masters():
        with node.client() as client:
            for name, stats in client.info("commandstats").items():
                command = name.removeprefix("cmdstat_")
                total[command] = total.get(command, 0) + int(stats["calls"])
    return total


def table(runs: list[Run]) -> str:
    lines = []
    for kind, label in (("single", "POST /v1/deposits"), ("batch", "POST /v1/batch, 1000 deposits each")):
        mine = [run for run in runs if run.kind == kind]
        if not mine:
            continue
        lines.append(f"{label}: {statistics.median(r.rate for r in mine):,.0f} deposits/s (median of {len(mine)}: ")
        lines[-1] += ", ".join(f"{r.rate:,.0f}" for r in mine) + f"), failures {sum(r.failures for r in mine)}"
        lines.append(f"  workers {statistics.median(r.workers_us for r in mine):6.1f} µs of CPU per deposit")
        masters = 0.0
        for name in mine[0].node_us:
            median = statistics.median(r.node_us[name] for r in mine)
            masters += median if name.startswith("master") else 0.0
            lines.append(f"  {name:24} {median:6.1f} µs of CPU per deposit")
        lines.append(f"  all masters            {masters:6.1f} µs of CPU per deposit")
        sent = {c: statistics.median(r.commands.get(c, 0.0) for r in mine) for c in mine[-1].commands}
        shown = sorted((c for c, n in sent.items() if n >= 0.01), key=lambda c: -sent[c])
        lines.append("  commands per deposit on the masters: " + ", ".join(f"{c} {sent[c]:.2f}" for c in shown))
    return "\n".join(lines)


def run_cluster(rounds: int, seconds: float, wait_replicas: int = 0) -> list[Run]:
    """`rounds` alternating single and batch runs on a LocalCluster and a service of its own, stopped after."""
    runs: list[Run] = []
    with ExitStack() as stack:
        cluster = LocalCluster().start()
        stack.callback(cluster.stop)
        mongo = MongoWireServer().start()
        stack.callback(mongo.stop)
        log = stack.enter_context(open(Path(tempfile.mkdtemp(prefix="billing-cluster-bench-")) / "service.log", "wb"))
        env = {
            "BILLING_REDIS_MODE": "cluster",
            "BILLING_REDIS_URL": cluster.url,
            "BILLING_PARTITIONS": str(PARTITIONS),
            "BILLING_PROJECTOR_ENABLED": "false",
            "BILLING_REDIS_WAIT_REPLICAS": str(wait_replicas),
        }
        service = start_service(cluster.url, mongo.url, 2, log, env)
        stack.callback(service.stop)
        service.wait_ready(2)
        for number in range(rounds):
            for kind in ("single", "batch"):
                run = measure(kind, cluster, service, seconds)
                runs.append(run)
                print(f"  cluster round {number + 1} {kind:6} {run.rate:9,.0f} deposits/s  failures {run.failures}")
    return runs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--wait-replicas", type=int, default=0, help="BILLING_REDIS_WAIT_REPLICAS of the service")
    args = parser.parse_args(argv)
    print(table(run_cluster(args.rounds, args.seconds, args.wait_replicas)))
    print(f"\nReproduce: .venv/bin/python -m bench.cluster {shlex.join(sys.argv[1:] if argv is None else argv)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
