"""Instructions redis-server runs per deposit script call, counted by callgrind: the ledger's and the floor's.

Instruction counts do not move with the machine's load, so they show a change of a few per cent in a script that
timings on a shared 2-core machine cannot. Each script runs `--calls` times on a redis-server of its own started
under `valgrind --tool=callgrind`, counting only inside EVALSHA (Lua, the commands it calls, their replies);
the deposits spread over 16 partitions and 100 users, each with an Idempotency-Key of its own.

    .venv/bin/python -m bench.script_cost [--calls 500]

Needs valgrind (Debian's package) and redis-server on PATH.
"""

from __future__ import annotations

import argparse
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable

import redis

from bench.floor_app import SCRIPT as FLOOR_SCRIPT
from billing.ledger.scripts import Idempotency, RedisKeys, load_script_sources
from tests.support.servers import free_port

Call = Callable[[int], tuple[list[str], list[str]]]


def instructions_per_call(source: str, call: Call, calls: int) -> float:
    """Instructions inside EVALSHA per call of `source`, call(i) giving the i-th call's keys and arguments."""
    port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "callgrind.out")
        server = subprocess.Popen(
            [
                "valgrind",
                "--tool=callgrind",
                "--toggle-collect=evalShaCommand",
                f"--callgrind-out-file={out}",
                "redis-server",
                "--port",
                str(port),
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                tmp,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            client = redis.Redis(port=port)
            deadline = time.monotonic() + 60
            while True:
                try:
                    client.ping()
                    break
                except redis.ConnectionError:
                    if time.monotonic() > deadline or server.poll() is not None:
                        raise
                    time.sleep(0.1)
            sha = client.script_load(source)
            for i in range(calls):
                keys, args = call(i)
                client.evalsha(sha, len(keys), *keys, *args)
            client.close()
        finally:
            server.terminate()
            server.wait()
        text = open(out).read()
    found = re.search(r"^(?:summary|totals): (\d+)", text, re.M)
    if found is None:
        raise RuntimeError("callgrind wrote no totals")
    return int(found.group(1)) / calls


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=500, help="script calls counted per script")
    args = parser.parse_args(argv)
    missing = [tool for tool in ("valgrind", "redis-server") if shutil.which(tool) is None]
    if missing:
        print(f"{' and '.join(missing)} not found (apt-get install -y valgrind; make redis-bin)", file=sys.stderr)
        return 1
    keys = RedisKeys("billing:")  # one Redis: each record at its key's home, as the service lays them out
    rng = random.Random(7)

    def deposit(i: int) -> tuple[list[str], list[str]]:
        user = i % 100 + 1
        partition = keys.partition_of(user)
        record = keys.idempotency_record(Idempotency("bench", f"key-{i}-{rng.random()}"), partition)[0]
        run = [keys.outbox(partition), keys.meta(partition), keys.totals(partition)]
        return [record, *run, keys.account(user)], [f"fp{i} en", "90000", str(partition), str(user), "100", "bench"]

    def floor(i: int) -> tuple[list[str], list[str]]:
        return [f"floor:{{u:{i % 100}}}:acct", "floor:outbox"], [str(i % 100), "100"]

    for name, source, call in (
        ("deposit script (lua/deposit.lua + prelude)", load_script_sources()["deposit"], deposit),
        ("floor script (HINCRBY + XADD)", FLOOR_SCRIPT, floor),
    ):
        print(f"{name:45} {instructions_per_call(source, call, args.calls):10,.0f} instructions per call", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
