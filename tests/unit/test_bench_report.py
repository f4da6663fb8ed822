"""The part of docs/performance.md that `make bench` writes: the targets as measured, met or not, and the marks
that keep the rest of the document as written."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from bench import report
from bench.batchload import BatchResult
from bench.cluster import Run
from bench.projector_bench import ProjectionCost
from bench.run import Results
from bench.wrkrun import PacedResult, WrkResult

DOC = Path(__file__).resolve().parents[2] / "docs" / "performance.md"


def _wrk(rate: float, cpu: float = 200.0, redis: float = 20.0) -> WrkResult:
    return WrkResult(rate=rate, p50=1.0, p99=5.0, requests=int(rate * 5), failures=0, cpu_us=cpu, redis_cpu_us=redis)


def _paced(p99: float) -> PacedResult:
    return PacedResult(
        target_rate=3000.0, achieved_rate=3000.0, count=45_000, failures=0, p50=1.0, p90=2.0, p99=p99, p999=p99, max=p99
    )


def _results(*, post_ratio: float, service_p99: list[float], batch_ops: float, rss_end: int) -> Results:
    args = argparse.Namespace(workers=2, rounds=3, seconds=5.0)
    results = Results(args=args, machine={"nproc": "2", "python": "3.11.7"}, load_before="0.1", load_after="1.0")
    results.rounds = {
        "floor post": [_wrk(6000.0), _wrk(6200.0), _wrk(5800.0)],
        "service post": [_wrk(6000.0 * post_ratio), _wrk(6200.0 * post_ratio), _wrk(5800.0 * post_ratio)],
        "floor get": [_wrk(7000.0)] * 3,
        "service get": [_wrk(8000.0)] * 3,
        "service many": [_wrk(3000.0, cpu=600.0, redis=80.0)] * 3,
    }
    results.paced = {
        "floor post": [_paced(3.0), _paced(4.0), _paced(5.0)],
        "service post": [_paced(p) for p in service_p99],
    }
    results.batch = BatchResult(ops_per_second=batch_ops, operations=100_000, batches=100, seconds=3.0, failures=0)
    results.batch_cpu_us = (30.0, 20.0, 0.0)
    results.redis_us_per_deposit = 18.0
    results.rss = {101: [70_000, 70_500, 70_000 + rss_end]}
    results.soak_seconds = 60.0
    results.projection_costs = [ProjectionCost("single", 50.0, 30.0, 300.0)]
    results.cluster_runs = [
        Run("batch", 17_000.0, 50_000, 0, 56.0, {"master a": 10.0, "master b": 11.0, "replica c": 3.0})
    ]
    return results


def _row(block: str, starts: str) -> list[str]:
    (line,) = [line for line in block.splitlines() if line.startswith("| " + starts)]
    return [cell.strip() for cell in line.strip("|").split(" | ")]


def test_each_target_is_judged_from_the_run_with_what_limits_it() -> None:
    block = report.performance_block(
        _results(post_ratio=0.9, service_p99=[4.0, 5.0, 30.0], batch_ops=40_000.0, rss_end=500), "make bench"
    )
    assert block.startswith(report.DOC_BEGIN) and block.endswith(report.DOC_END)
    post = _row(block, "POST /v1/deposits")
    assert post[1].startswith("**0.90**") and post[2] == "yes"
    paced = _row(block, "p99 at half the maximum rate, POST")
    # median 5.00 against the floor's 4.00: 1.25 × but the rounds' p99 allowed; lowest rounds 4.00 and 3.00
    assert paced[1].startswith("**5.00 ms** against the floor's 4.00 (1.25 ×") and paced[2] == "yes"
    assert "4.00 against 3.00 ms" in paced[3]
    batch = _row(block, "POST /v1/batch")
    assert batch[1].startswith("**40,000**") and batch[2] == "**no**"
    assert (
        "2 / (30.0 + 20.0 + 0.0 µs, the load generator's) = 40,000 deposits/s" in batch[3] and "under 40 µs" in batch[3]
    )
    assert _row(block, "GET /v1/balances")[1].startswith("**300,000** balances/s")
    assert _row(block, "RSS per worker")[2] == "yes"
    assert "all masters 21.0 µs" in _row(block, "Redis Cluster")[1]
    assert "**30.0 µs** its own work" in _row(block, "the projector's CPU")[1]


def test_a_target_missed_says_no() -> None:
    block = report.performance_block(
        _results(post_ratio=0.7, service_p99=[14.0, 15.0, 16.0], batch_ops=60_000.0, rss_end=20_000), "make bench"
    )
    assert _row(block, "POST /v1/deposits")[2] == "**no**"
    assert _row(block, "p99 at half the maximum rate, POST")[2] == "**no**"
    assert _row(block, "POST /v1/batch")[2] == "yes"
    assert _row(block, "RSS per worker")[2] == "**no**"


def test_only_the_marked_part_is_replaced() -> None:
    document = f"# Title\nabove\n{report.DOC_BEGIN}\nold table\n{report.DOC_END}\nbelow\n"
    written = report.write_block(document, f"{report.DOC_BEGIN}\nnew\n{report.DOC_END}")
    assert written == f"# Title\nabove\n{report.DOC_BEGIN}\nnew\n{report.DOC_END}\nbelow\n"
    with pytest.raises(ValueError):
        report.write_block("# no marks\n", "new")


def test_the_performance_document_has_the_part_make_bench_writes() -> None:
    text = DOC.read_text()
    assert text.count(report.DOC_BEGIN) == 1 and text.count(report.DOC_END) == 1
    assert text.index(report.DOC_BEGIN) < text.index(report.DOC_END)


def test_make_bench_writes_the_performance_document() -> None:
    from bench import run

    assert run.parse_args([]).doc == DOC


async def test_the_batch_load_generator_counts_each_operation_the_service_applied() -> None:
    """bench.batchload reads the answers' bytes, not their JSON: every operation answered 201 counts, any other
    answer (a refusal in the batch, a whole request refused) is a failure."""
    import orjson
    import tornado.web
    from tornado.httpserver import HTTPServer
    from tornado.netutil import bind_sockets

    from bench import batchload

    class Batch(tornado.web.RequestHandler):
        calls = 0

        def post(self) -> None:
            Batch.calls += 1
            assert self.request.headers["Authorization"] == "Bearer t0k"
            operations = orjson.loads(self.request.body)["operations"]
            if Batch.calls == 2:
                self.set_status(503)
                self.finish(orjson.dumps({"status": 503, "code": "unavailable"}))
                return
            refused = {"status": 402, "body": {"status": 402, "code": "insufficient_funds"}}
            applied = {"status": 201, "body": {"balance": {"available": "1.00"}}}
            self.finish(orjson.dumps({"results": [refused if i == 0 else applied for i in range(len(operations))]}))

    sockets = bind_sockets(0, "127.0.0.1")
    server = HTTPServer(tornado.web.Application([("/v1/batch", Batch)]))
    server.add_sockets(sockets)
    try:
        bodies = batchload.build_bodies(3, 5, "t", users=10)
        port = sockets[0].getsockname()[1]
        result = await batchload.send_bodies(f"http://127.0.0.1:{port}", "t0k", bodies, concurrency=1, seconds=30)
    finally:
        server.stop()
    assert (result.batches, result.operations, result.failures) == (3, 8, 1 + 5 + 1)
