"""The benchmark's table and bench/RESULTS.md: medians, ratios to the floor, and which targets are met."""

from __future__ import annotations

import statistics
import time
from typing import Any

from bench.cluster import table as cluster_table
from bench.wrkrun import MANY_IDS

TARGETS = {
    "post": 0.80,  # service POST /v1/deposits rate / floor POST rate
    "get": 0.85,  # service GET balance rate / floor GET rate
    "p99_ms": 10.0,  # at half the maximum rate
    "p99_floor": 1.5,  # at half the maximum rate: the service's p99 / the floor's p99 at the same rate
    "batch_ops": 50_000.0,
    "many_balances": 100_000.0,  # balances per second read through GET /v1/balances, 100 ids per request
    "rss_drift": 0.10,
}


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else 0.0


def _met(ok: bool) -> str:
    return "yes" if ok else "**no**"


def summary(results: Any) -> list[tuple[str, str, str, str, str, str]]:
    """Rows: measure, floor, service, ratio or figure, target, met."""
    rows = []
    for mode, label in (("post", "POST /v1/deposits (req/s)"), ("get", "GET /v1/users/{id}/balance (req/s)")):
        floor = _median([r.rate for r in results.rounds.get(f"floor {mode}", [])])
        service = _median([r.rate for r in results.rounds.get(f"service {mode}", [])])
        ratio = service / floor if floor else 0.0
        rows.append(
            (
                label,
                f"{floor:.0f}",
                f"{service:.0f}",
                f"{ratio:.2f}",
                f">= {TARGETS[mode]:.2f}",
                _met(ratio >= TARGETS[mode]),
            )
        )
        pairs = [
            service_round.rate / floor_round.rate
            for floor_round, service_round in zip(
                results.rounds.get(f"floor {mode}", []), results.rounds.get(f"service {mode}", []), strict=False
            )
            if floor_round.rate
        ]
        rows.append(
            (
                "  service/floor round by round (each round's two runs back to back)",
                "",
                "",
                " ".join(f"{ratio:.2f}" for ratio in pairs),
                f"median {_median(pairs):.2f}",
                "",
            )
        )
        floor_p = [r.p99 for r in results.rounds.get(f"floor {mode}", [])]
        service_p = [r.p99 for r in results.rounds.get(f"service {mode}", [])]
        rows.append(
            (
                f"  p50 / p99 at max rate, {mode.upper()} (ms)",
                f"{_median([r.p50 for r in results.rounds.get(f'floor {mode}', [])]):.1f} / {_median(floor_p):.1f}",
                f"{_median([r.p50 for r in results.rounds.get(f'service {mode}', [])]):.1f} / {_median(service_p):.1f}",
                "",
                "",
                "",
            )
        )
        floor_cpu = _median([r.cpu_us for r in results.rounds.get(f"floor {mode}", [])])
        service_cpu = _median([r.cpu_us for r in results.rounds.get(f"service {mode}", [])])
        rows.append(
            (
                f"  worker CPU per request, {mode.upper()} (µs; + Redis)",
                f"{floor_cpu:.0f} + {_median([r.redis_cpu_us for r in results.rounds.get(f'floor {mode}', [])]):.0f}",
                f"{service_cpu:.0f} + "
                f"{_median([r.redis_cpu_us for r in results.rounds.get(f'service {mode}', [])]):.0f}",
                f"{floor_cpu / service_cpu:.2f}" if service_cpu else "",
                "(floor CPU / service CPU)",
                "",
            )
        )
    many = results.rounds.get("service many", [])
    if many:
        floor_get = _median([r.rate for r in results.rounds.get("floor get", [])])
        balances = _median([r.rate for r in many]) * MANY_IDS
        rows.append(
            (
                f"GET /v1/balances, {MANY_IDS} ids per request (balances/s; floor: single reads/s)",
                f"{floor_get:.0f}",
                f"{balances:.0f}",
                f"{balances / floor_get:.1f}" if floor_get else "",
                f">= {TARGETS['many_balances']:.0f}",
                _met(balances >= TARGETS["many_balances"] and not any(r.failures for r in many)),
            )
        )
        rows.append(
            (
                "  worker CPU per balance, GET /v1/balances (µs; + Redis)",
                "",
                f"{_median([r.cpu_us for r in many]) / MANY_IDS:.1f} + "
                f"{_median([r.redis_cpu_us for r in many]) / MANY_IDS:.1f}",
                "",
                "",
                "",
            )
        )
    competing = results.rounds.get("service post, SecantusDB running")
    floor_post = _median([r.rate for r in results.rounds.get("floor post", [])])
    if competing and floor_post:
        rows.append(
            (
                "  POST with SecantusDB running on the same 2 cores (req/s)",
                f"{floor_post:.0f}",
                f"{competing[0].rate:.0f}",
                f"{competing[0].rate / floor_post:.2f}",
                "(reference)",
                "",
            )
        )
    for mode, runs in results.paced.items():
        side, method = mode.split()
        if side != "service":
            continue
        p50, p99 = _median([r.p50 for r in runs]), _median([r.p99 for r in runs])
        floor_runs = results.paced.get(f"floor {method}", [])
        floor_p50, floor_p99 = _median([r.p50 for r in floor_runs]), _median([r.p99 for r in floor_runs])
        rows.append(
            (
                f"p99 at half max rate, {method.upper()} ({runs[0].target_rate:.0f} req/s, ms; median of {len(runs)})",
                f"p50 {floor_p50:.2f} / p99 {floor_p99:.2f}" if floor_runs else "",
                f"p50 {p50:.2f} / p99 {p99:.2f}",
                f"{p99 / floor_p99:.2f} × the floor's p99" if floor_p99 else f"{p99:.2f}",
                f"<= {TARGETS['p99_floor']:.1f} × and < {TARGETS['p99_ms']:.0f} ms",
                _met(
                    p99 < TARGETS["p99_ms"]
                    and floor_p99 > 0
                    and p99 <= TARGETS["p99_floor"] * floor_p99
                    and not any(r.failures for r in runs)
                ),
            )
        )
    if results.batch is not None:
        ops = results.batch.ops_per_second
        rows.append(
            (
                "POST /v1/batch, 1000 deposits each (ops/s)",
                "",
                f"{ops:.0f}",
                f"{ops:.0f}",
                f">= {TARGETS['batch_ops']:.0f}",
                _met(ops >= TARGETS["batch_ops"] and not results.batch.failures),
            )
        )
    for cost in getattr(results, "projection_costs", []):
        rows.append(
            (
                f"projector CPU per transaction, {cost.writes} writes (µs: into SecantusDB / its own work)",
                "",
                f"{cost.projector_us:.1f} / {cost.own_us:.1f}",
                f"{cost.own_us:.1f}",
                "(reported)",
                "",
            )
        )
    for kind in ("single", "batch"):
        runs = [run for run in getattr(results, "cluster_runs", []) if run.kind == kind]
        if runs:
            masters = sum(_median([r.node_us[name] for r in runs]) for name in runs[0].node_us if "master" in name)
            rows.append(
                (
                    f"Redis Cluster, {'POST /v1/deposits' if kind == 'single' else 'POST /v1/batch'} "
                    "(deposits/s; µs of CPU per deposit: workers, all masters)",
                    "",
                    f"{_median([r.rate for r in runs]):.0f}",
                    f"{_median([r.workers_us for r in runs]):.1f}, {masters:.1f}",
                    "(reported)",
                    "",
                )
            )
    for index, (_pid, samples) in enumerate(sorted(results.rss.items())):
        start, end, peak = samples[0], samples[-1], max(samples)
        drift = max(abs(end - start), abs(peak - start)) / start if start else 0.0
        rows.append(
            (
                f"RSS worker {index + 1} over {results.soak_seconds:.0f} s (MiB)",
                "",
                f"{start / 1024:.1f} -> {end / 1024:.1f} (peak {peak / 1024:.1f})",
                f"{100 * drift:+.1f} %",
                "within 10 %",
                _met(drift <= TARGETS["rss_drift"]),
            )
        )
    return rows


def _mongo_note(results: Any) -> str:
    if not getattr(results, "mongo_paused", False):
        return "SecantusDB (the MongoDB stand-in) ran during every run, sharing the 2 cores."
    return (
        "SecantusDB, the Python stand-in for MongoDB (about 0.5 ms of CPU per document), is paused (SIGSTOP) "
        "during every measured run (floor and service alike), as a MongoDB on its own host would take none of these 2 cores: "
        "each worker's projector runs, its writes wait, and the projection completes after the run; a POST "
        "round's worker CPU per request includes projecting its deposits. One extra POST round runs with "
        "SecantusDB running, for reference."
    )


def _projection_line(results: Any) -> str:
    if not getattr(results, "projection_us", None):
        return ""
    worker = _median([w for w, _ in results.projection_us])
    mongo = _median([m for _, m in results.projection_us])
    return (
        f"\n\nProjection after the POST rounds (medians, per deposit): workers {worker:.1f} µs of CPU, "
        f"SecantusDB {mongo:.0f} µs."
    )


def _projection_section(results: Any) -> str:
    costs = getattr(results, "projection_costs", [])
    if not costs:
        return ""
    rows = [
        (c.writes, f"{c.projector_us:.1f}", f"{c.own_us:.1f}", f"{c.client_us:.1f}", f"{c.store_us:.0f}") for c in costs
    ]
    return f"""## The projector's CPU per transaction
After the service's runs, with the machine to itself: `bench.projector_bench`'s rounds ({results.args.projector_rounds}
of each, medians; the warm drain of each round, with the hash chain). Single writes make an outbox entry per
transaction; batched writes (as `POST /v1/batch`) ten to an entry. "Its own work" projects into a store that
accepts every write at once; the MongoDB client's is the difference.

{_table(("writes", "projector µs, into SecantusDB", "its own work µs", "MongoDB client µs", "SecantusDB µs"), rows)}

"""


def _cluster_section(results: Any) -> str:
    runs = getattr(results, "cluster_runs", [])
    if not runs:
        return ""
    return f"""## Redis Cluster
`bench.cluster` with {len(runs) // 2} rounds of {results.args.seconds:.0f} s: 3 masters and 3 replicas on this machine, 2 workers,
16 partitions, the projector off. CPU per deposit by process (medians):

```
{cluster_table(runs)}
```

"""


def _extra_env(args: Any) -> str:
    extra = getattr(args, "service_env", None)
    return f", service environment {' '.join(extra)}" if extra else ""


def _table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def render(results: Any, command: str) -> str:
    args = results.args
    rows = summary(results)
    raw = []
    for key, runs in results.rounds.items():
        for number, r in enumerate(runs, 1):
            raw.append(
                (
                    key,
                    str(number),
                    f"{r.rate:.1f}",
                    f"{r.cpu_us:.0f}",
                    f"{r.redis_cpu_us:.0f}",
                    f"{r.p50:.2f}",
                    f"{r.p99:.2f}",
                    str(r.requests),
                    str(r.failures),
                )
            )
    paced = [
        (
            key,
            str(number),
            f"{p.target_rate:.0f}",
            f"{p.achieved_rate:.0f}",
            str(p.count),
            f"{p.p50:.2f}",
            f"{p.p90:.2f}",
            f"{p.p99:.2f}",
            f"{p.p999:.2f}",
            f"{p.max:.2f}",
            str(p.failures),
        )
        for key, runs in results.paced.items()
        for number, p in enumerate(runs, 1)
    ]
    machine = "\n".join(f"- {key}: {value}" for key, value in results.machine.items())
    batch = results.batch
    batch_line = (
        f"{batch.operations} operations in {batch.batches} batches over {batch.seconds:.1f} s, "
        f"{batch.failures} not 201. CPU per operation (from /proc): workers {results.batch_cpu_us[0]:.1f} µs, "
        f"Redis {results.batch_cpu_us[1]:.1f} µs, SecantusDB {results.batch_cpu_us[2]:.1f} µs"
        f"{' (paused: projection not included)' if getattr(results, 'mongo_paused', False) else ''}; "
        f"Redis ran scripts for {results.redis_us_per_deposit:.1f} µs per deposit (INFO commandstats, fcall usec)"
        if batch is not None
        else "not run"
    )
    return f"""# Benchmark results

Run {time.strftime("%Y-%m-%d %H:%M:%S %Z")} with `{command}`: {args.workers} workers each side,
{args.connections} connections, {args.rounds} alternating floor/service rounds of {args.seconds:.0f} s (medians),
memory run {args.soak:.0f} s{_extra_env(args)}. Load average before {results.load_before}, after {results.load_after}
(other work shares this machine: the ratios from alternating rounds are the figures that count).
{_mongo_note(results)}

{_table(("measure", "floor", "service", "ratio / figure", "target", "met"), rows)}

## Machine
{machine}

## Every round (closed loop, wrk)
{_table(("run", "round", "req/s", "worker CPU µs/req", "Redis CPU µs/req", "p50 ms", "p99 ms", "requests", "failures"), raw)}

## Paced runs (fixed rate, latency from the scheduled send time)
{_table(("run", "round", "target req/s", "achieved", "requests", "p50", "p90", "p99", "p99.9", "max", "failures"), paced)}

## Batch
{batch_line}{_projection_line(results)}

{_projection_section(results)}{_cluster_section(results)}
## Where a worker's time goes (POST /v1/deposits at the maximum rate)
{results.profile_note}

{_table(("layer (own time)", "share of samples"), [(n, f"{v:.1f} %") for n, v in results.profile_layers])}

{_table(("function (own time)", "share of samples"), [(n, f"{v:.1f} %") for n, v in results.profile_functions])}
"""
