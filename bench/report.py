"""The benchmark's table, bench/RESULTS.md and the part of docs/performance.md that `make bench` writes: medians,
ratios to the floor, which targets are met and what limits each figure."""

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


def _rounds(results: Any, key: str, attr: str) -> list[float]:
    return [getattr(r, attr) for r in results.rounds.get(key, [])]


def _rate_ratio(results: Any, mode: str) -> tuple[float, float, float, list[float]]:
    """The floor's and the service's median rate of `mode` ("post", "get"), their ratio (the target's figure), and
    the ratio of each round's two runs."""
    floor_rates, service_rates = _rounds(results, f"floor {mode}", "rate"), _rounds(results, f"service {mode}", "rate")
    floor, service = _median(floor_rates), _median(service_rates)
    pairs = [s / f for f, s in zip(floor_rates, service_rates, strict=False) if f]
    return floor, service, service / floor if floor else 0.0, pairs


def _paced_met(runs: list[Any], floor_runs: list[Any]) -> bool:
    """The paced target: the service's median p99 under TARGETS["p99_ms"] and within TARGETS["p99_floor"] × the
    floor's median p99 at the same rate, with no failures."""
    p99, floor_p99 = _median([r.p99 for r in runs]), _median([r.p99 for r in floor_runs])
    return (
        p99 < TARGETS["p99_ms"]
        and floor_p99 > 0
        and p99 <= TARGETS["p99_floor"] * floor_p99
        and not any(r.failures for r in runs)
    )


def _batch_met(batch: Any) -> bool:
    return bool(batch.ops_per_second >= TARGETS["batch_ops"] and not batch.failures)


def _many_met(balances: float, many: list[Any]) -> bool:
    return balances >= TARGETS["many_balances"] and not any(r.failures for r in many)


def _masters_us(runs: list[Any]) -> float:
    """CPU per deposit of every master of a cluster together (medians over the runs)."""
    return sum(_median([r.node_us[name] for r in runs]) for name in runs[0].node_us if "master" in name)


def _rss_drift(samples: list[int]) -> float:
    """How far a worker's RSS moved from its first sample over the memory run (its last or its peak), a fraction."""
    start = samples[0]
    return max(abs(samples[-1] - start), abs(max(samples) - start)) / start if start else 0.0


def summary(results: Any) -> list[tuple[str, str, str, str, str, str]]:
    """Rows: measure, floor, service, ratio or figure, target, met."""
    rows = []
    for mode, label in (("post", "POST /v1/deposits (req/s)"), ("get", "GET /v1/users/{id}/balance (req/s)")):
        floor, service, ratio, pairs = _rate_ratio(results, mode)
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
                _met(_many_met(balances, many)),
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
                _met(_paced_met(runs, floor_runs)),
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
                _met(_batch_met(results.batch)),
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
            masters = _masters_us(runs)
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
        drift = _rss_drift(samples)
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
        f"Redis {results.batch_cpu_us[1]:.1f} µs, SecantusDB {results.batch_cpu_us[2]:.1f} µs, the load generator "
        f"{batch.client_cpu_us:.1f} µs"
        f"{' (paused: projection not included)' if getattr(results, 'mongo_paused', False) else ''}; "
        f"Redis ran scripts for {results.redis_us_per_deposit:.1f} µs per deposit (INFO commandstats, fcall usec)"
        if batch is not None
        else "not run"
    )
    return f"""# Benchmark results

Run {time.strftime("%Y-%m-%d %H:%M:%S %Z")} with `{command}`: {args.workers} workers each side,
{args.connections} connections, {args.rounds} alternating floor/service rounds of {args.seconds:.0f} s (medians),
memory run {args.soak:.0f} s{_extra_env(args)}. Load average before {results.load_before}, after {results.load_after};
the hypervisor took {100 * results.stolen:.0f} % of the CPU time over the run (steal)
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


# ---- docs/performance.md: the part `make bench` writes ----------------------------------------------------

# The lines that enclose what make bench writes into docs/performance.md; everything outside them is the
# document's own text.
DOC_BEGIN = "<!-- make bench writes from here to its end mark: edits in between are overwritten -->"
DOC_END = "<!-- make bench writes up to here -->"
# The CPU a batched operation may cost, workers' and Redis's together, for TARGETS["batch_ops"] on 2 cores.
BATCH_CPU_BUDGET_US = 2 * 1e6 / TARGETS["batch_ops"]


def _ms(values: list[float]) -> str:
    return ", ".join(f"{v:.2f}" for v in values)


def _ratio_row(results: Any, mode: str, label: str) -> tuple[str, str, str, str]:
    floor, service, ratio, pairs = _rate_ratio(results, mode)
    floor_cpu, service_cpu = (
        _median(_rounds(results, f"floor {mode}", "cpu_us")),
        _median(_rounds(results, f"service {mode}", "cpu_us")),
    )
    floor_redis = _median(_rounds(results, f"floor {mode}", "redis_cpu_us"))
    service_redis = _median(_rounds(results, f"service {mode}", "redis_cpu_us"))
    return (
        f"{label} ≥ {TARGETS[mode]:.2f} × the floor",
        f"**{ratio:.2f}** ({service:.0f} against {floor:.0f} req/s, medians of {len(pairs)} alternating rounds); round "
        f"by round {', '.join(f'{p:.2f}' for p in pairs)} (median {_median(pairs):.2f})",
        _met(ratio >= TARGETS[mode]),
        f"CPU per request: the workers' {service_cpu:.0f} µs against the floor's {floor_cpu:.0f}"
        f"{' (projecting the deposit included)' if mode == 'post' else ''}, Redis's {service_redis:.0f} against "
        f"{floor_redis:.0f} µs",
    )


def _paced_row(results: Any, method: str) -> tuple[str, str, str, str] | None:
    runs, floor_runs = results.paced.get(f"service {method}", []), results.paced.get(f"floor {method}", [])
    if not runs or not floor_runs:
        return None
    p99, floor_p99 = _median([r.p99 for r in runs]), _median([r.p99 for r in floor_runs])
    best, floor_best = min(r.p99 for r in runs), min(r.p99 for r in floor_runs)
    return (
        f"p99 at half the maximum rate, {method.upper()}: ≤ {TARGETS['p99_floor']:.1f} × the floor's p99 at the same "
        f"rate and < {TARGETS['p99_ms']:.0f} ms",
        f"**{p99:.2f} ms** against the floor's {floor_p99:.2f} ({p99 / floor_p99:.2f} ×; medians of {len(runs)} rounds "
        f"at {runs[0].target_rate:.0f} req/s: the service's {_ms([r.p99 for r in runs])}, the floor's "
        f"{_ms([r.p99 for r in floor_runs])})",
        _met(_paced_met(runs, floor_runs)),
        f"at this rate both sides are idle most of the time, so the tail is what delays a queue of requests: a "
        f"pause of the machine (which this VM has every few seconds) or of the worker; the lowest round of each "
        f"side, {best:.2f} against {floor_best:.2f} ms ({best / floor_best:.2f} ×), is the run with the fewest pauses",
    )


def _batch_row(results: Any) -> tuple[str, str, str, str] | None:
    batch = results.batch
    if batch is None:
        return None
    workers, redis_us, client = results.batch_cpu_us[0], results.batch_cpu_us[1], batch.client_cpu_us
    ceiling = 2e6 / (workers + redis_us + client) if workers + redis_us + client else 0.0
    return (
        f"POST /v1/batch of 1000 deposits ≥ {TARGETS['batch_ops']:,.0f} deposits/s",
        f"**{batch.ops_per_second:,.0f}** deposits/s; CPU per deposit: workers {workers:.1f} µs, Redis {redis_us:.1f} µs "
        f"(its functions {results.redis_us_per_deposit:.1f} µs by INFO commandstats)",
        _met(_batch_met(batch)),
        f"CPU: the two cores allow at most 2 / ({workers:.1f} + {redis_us:.1f} + {client:.1f} µs, the load generator's) = "
        f"{ceiling:,.0f} deposits/s, and Redis's one core {1e6 / redis_us if redis_us else 0:,.0f}/s; "
        f"{TARGETS['batch_ops']:,.0f}/s needs the three together under {BATCH_CPU_BUDGET_US:.0f} µs (where they go: below)",
    )


def _balances_row(results: Any) -> tuple[str, str, str, str] | None:
    many = results.rounds.get("service many", [])
    if not many:
        return None
    floor_get = _median(_rounds(results, "floor get", "rate"))
    balances = _median([r.rate for r in many]) * MANY_IDS
    return (
        f"GET /v1/balances, {MANY_IDS} ids a request, ≥ {TARGETS['many_balances']:,.0f} balances/s",
        f"**{balances:,.0f}** balances/s ({balances / floor_get:.0f} × the floor's single reads)"
        if floor_get
        else f"{balances:,.0f}",
        _met(_many_met(balances, many)),
        f"CPU per balance: the workers' {_median([r.cpu_us for r in many]) / MANY_IDS:.1f} µs, Redis's "
        f"{_median([r.redis_cpu_us for r in many]) / MANY_IDS:.1f} µs",
    )


def _projection_row(results: Any) -> tuple[str, str, str, str] | None:
    costs = getattr(results, "projection_costs", [])
    if not costs:
        return None
    measured = "; ".join(
        f"{c.writes} writes {c.projector_us:.1f} µs into SecantusDB, **{c.own_us:.1f} µs** its own work" for c in costs
    )
    limits = "; ".join(f"{c.writes} writes: the MongoDB client's {c.client_us:.1f} µs" for c in costs)
    return (
        "the projector's CPU per transaction, apart from the store's",
        measured,
        "reported",
        f"{limits}; of its own work, an outbox entry's read, decoding and acknowledgement (once per entry: ten "
        "transactions to an entry from batches, one from single requests) and each transaction's hash-chain link",
    )


def _cluster_row(results: Any) -> tuple[str, str, str, str] | None:
    runs = getattr(results, "cluster_runs", [])
    if not runs:
        return None
    parts = []
    for kind, label in (("single", "single deposits"), ("batch", "batches")):
        mine = [run for run in runs if run.kind == kind]
        if mine:
            masters = _masters_us(mine)
            parts.append(
                f"{label} {_median([r.rate for r in mine]):,.0f}/s: workers {_median([r.workers_us for r in mine]):.1f} µs, "
                f"all masters {masters:.1f} µs per deposit"
            )
    return (
        "Redis Cluster (3 masters, 3 replicas, this machine)",
        "; ".join(parts),
        "reported",
        "every node shares these two cores with the workers ([scaling.md](scaling.md) has the figures per node)",
    )


def _rss_row(results: Any) -> tuple[str, str, str, str] | None:
    if not results.rss:
        return None
    samples_of = [samples for _pid, samples in sorted(results.rss.items())]
    ok = all(_rss_drift(samples) <= TARGETS["rss_drift"] for samples in samples_of)
    spans = [f"{s[0] / 1024:.1f} → {s[-1] / 1024:.1f} MiB (peak {max(s) / 1024:.1f})" for s in samples_of]
    return (
        f"RSS per worker flat ±{100 * TARGETS['rss_drift']:.0f} % over {results.soak_seconds:.0f} s",
        ", ".join(spans),
        _met(ok),
        "",
    )


def performance_block(results: Any, command: str) -> str:
    """What make bench writes into docs/performance.md: the targets as measured, the machine, the command."""
    rows = [
        _ratio_row(results, "post", "POST /v1/deposits"),
        _ratio_row(results, "get", "GET /v1/users/{id}/balance"),
        _balances_row(results),
        _paced_row(results, "post"),
        _paced_row(results, "get"),
        _batch_row(results),
        _projection_row(results),
        _cluster_row(results),
        _rss_row(results),
    ]
    machine = ", ".join(f"{key} {value}" for key, value in results.machine.items())
    reference = ""
    competing = results.rounds.get("service post, SecantusDB running")
    floor_post = _median(_rounds(results, "floor post", "rate"))
    if competing and floor_post and getattr(results, "projection_us", None):
        reference = (
            f"\n\nFrom the same run, for reference: with SecantusDB running on the same cores the service's POST rate "
            f"is {competing[0].rate / floor_post:.2f} of the floor's; projecting a deposit (its hash-chain link "
            f"included) costs the workers {_median([w for w, _ in results.projection_us]):.1f} µs of CPU and "
            f"SecantusDB {_median([m for _, m in results.projection_us]):.0f} µs."
        )
    return f"""{DOC_BEGIN}
`{command}`, {time.strftime("%Y-%m-%d %H:%M %Z")}: {results.args.workers} workers each side, {results.args.rounds}
alternating floor/service rounds of {results.args.seconds:.0f} s for each rate, load average {results.load_before}
before and {results.load_after} after, {100 * results.stolen:.0f} % of the CPU time taken by the hypervisor (steal);
every round is in [bench/RESULTS.md](../bench/RESULTS.md). The machine: {machine}.

{_table(("target", "measured", "met", "what limits it"), [row for row in rows if row is not None])}{reference}
{DOC_END}"""


def write_block(document: str, block: str) -> str:
    """The document with its part between DOC_BEGIN and DOC_END (the marks included) replaced by block."""
    start, end = document.find(DOC_BEGIN), document.find(DOC_END)
    if start < 0 or end < start:
        raise ValueError(f"the document has no part for make bench: {DOC_BEGIN!r} ... {DOC_END!r}")
    return document[:start] + block + document[end + len(DOC_END) :]
