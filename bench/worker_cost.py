"""Instructions a worker runs per deposit, counted by valgrind: the service's and the floor's, in process.

Timings on a shared 2-core machine move by ±20 % from one minute to the next; instruction counts do not, so
they show a change of a per cent or two in the worker's own path. Each side's application (bench.hotpath's:
Tornado, the handler, the Redis client, no sockets to the client) answers deposits from a fresh process run
under `valgrind --tool=cachegrind`, against a real redis-server; the count per deposit is the difference
between a run of `--more` deposits and one of `--fewer`, so start-up, imports and warm-up cancel out.
Under valgrind a process runs about 50 times slower, so what the service gathers and writes every 50 ms
(access-log lines, metric updates) is written for fewer requests at a time than when serving: counted high.

    .venv/bin/python -m bench.worker_cost [--fewer 100] [--more 1100] [--batch]

`--batch` also counts the service's deposits sent as POST /v1/batch of 1000 (each with a key of its own), per
deposit, by the difference of runs of whole batches.

Needs valgrind (Debian's package) and redis-server on PATH; about a minute.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import subprocess
import sys
import tempfile

from bench.hotpath import BATCH_SIZE
from tests.support.servers import RedisServer

WARM_UP = 300


async def _deposits(side: str, count: int, redis_url: str) -> None:
    """The child: `count` deposits (after WARM_UP) through one side's application; the batch side sends them as
    POST /v1/batch of BATCH_SIZE (count a multiple of it), after one batch of warm-up."""
    from bench import hotpath

    if side == "floor":
        send = hotpath.floor_deposits(hotpath.driver(await hotpath.floor_app(redis_url)))
        sends, expect = WARM_UP + count, 201
    else:
        app = hotpath.driver(await hotpath.service_app(redis_url, open(os.devnull, "w")))  # noqa: SIM115
        if side == "batch":
            sends, expect = 1 + count // hotpath.BATCH_SIZE, 200
            send = hotpath.service_batches(app, os.getpid(), sends)
        else:
            send, sends, expect = hotpath.service_deposits(app, os.getpid()), WARM_UP + count, 201
    for i in range(sends):
        status = await send(i)
        if status != expect:
            raise SystemExit(f"{side}: request {i} answered {status}")


def _instructions(side: str, count: int, redis_url: str) -> int:
    """Instructions of one child process answering `count` deposits (start-up included)."""
    env = {**os.environ, "PYTHONHASHSEED": "0", "PROMETHEUS_MULTIPROC_DIR": tempfile.mkdtemp(prefix="billing-wc-")}
    out = subprocess.run(
        [
            "valgrind",
            "--tool=cachegrind",
            "--cache-sim=no",
            "--cachegrind-out-file=/dev/null",
            sys.executable,
            "-m",
            "bench.worker_cost",
            "--child",
            side,
            str(count),
            redis_url,
        ],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    shutil.rmtree(env["PROMETHEUS_MULTIPROC_DIR"], ignore_errors=True)
    found = re.search(r"I\s+refs:\s+([\d,]+)", out.stderr)
    if out.returncode != 0 or found is None:
        raise RuntimeError(f"{side}: valgrind run failed:\n{out.stderr[-2000:]}")
    return int(found.group(1).replace(",", ""))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fewer", type=int, default=100, help="deposits of the shorter run")
    parser.add_argument("--more", type=int, default=1100, help="deposits of the longer run")
    parser.add_argument(
        "--batch",
        action="store_true",
        help="also the service's deposits sent as POST /v1/batch of 1000 (runs of --fewer and --more deposits, "
        "rounded up to whole batches)",
    )
    parser.add_argument("--child", nargs=3, metavar=("SIDE", "COUNT", "REDIS_URL"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        side, count, url = args.child
        asyncio.run(_deposits(side, int(count), url))
        return 0
    missing = [tool for tool in ("valgrind", "redis-server") if shutil.which(tool) is None]
    if missing:
        print(f"{' and '.join(missing)} not found (apt-get install -y valgrind; make redis-bin)", file=sys.stderr)
        return 1
    redis_server = RedisServer().start()
    try:
        per = {}
        for side in ("floor", "service"):
            fewer, more = (_instructions(side, n, redis_server.url) for n in (args.fewer, args.more))
            per[side] = (more - fewer) / (args.more - args.fewer)
            print(f"{side:8} {per[side]:12,.0f} instructions per deposit", flush=True)
        print(f"floor/service {per['floor'] / per['service']:.3f}")
        if args.batch:
            size = BATCH_SIZE
            lots = [size * max(1, -(-n // size)) for n in (args.fewer, args.more)]
            if lots[0] == lots[1]:
                lots[1] += size
            fewer, more = (_instructions("batch", n, redis_server.url) for n in lots)
            print(
                f"batch    {(more - fewer) / (lots[1] - lots[0]):12,.0f} instructions per deposit in a batch of {size}"
            )
    finally:
        redis_server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
