"""Instructions redis-server runs per deposit call, counted by callgrind: the ledger's function and the floor's script.

Instruction counts do not move with the machine's load, so they show a change of a few per cent in a script that
timings on a shared 2-core machine cannot. Each runs `--calls` times on a redis-server of its own started under
`valgrind --tool=callgrind`, counting only inside the command (FCALL of the ledger's deposit function, EVALSHA of
the floor's script: Lua, the commands it calls, their replies); the deposits spread over 16 partitions and 100
users, each with an Idempotency-Key of its own. The batch function's line is per deposit of a run of BATCH_CHUNK
deposits of one partition, each with its own key, as `POST /v1/batch` sends them.

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
from billing.ledger.scripts import BATCH, BATCH_CHUNK, Idempotency, RedisKeys, build_library
from tests.support.servers import free_port

Call = Callable[[int], tuple[list[str], list[str]]]


# What a measured call is: the command counted (callgrind's function for it), how to load it, and its name.
Load = Callable[[redis.Redis], list[str]]


def evalsha(source: str) -> tuple[str, Load]:
    return "evalShaCommand", lambda client: ["EVALSHA", client.script_load(source)]


def fcall(code: str, function: str) -> tuple[str, Load]:
    def load(client: redis.Redis) -> list[str]:
        client.function_load(code)
        return ["FCALL", function]

    return "fcallCommand", load


def instructions_per_call(command: tuple[str, Load], call: Call, calls: int, per: int = 1) -> float:
    """Instructions inside the command per call (per: per one of each call's per operations), call(i) giving the
    i-th call's keys and arguments."""
    counted, load = command
    port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "callgrind.out")
        server = subprocess.Popen(
            [
                "valgrind",
                "--tool=callgrind",
                f"--toggle-collect={counted}",
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
            prefix = load(client)
            for i in range(calls):
                keys, args = call(i)
                client.execute_command(*prefix, len(keys), *keys, *args)
            client.close()
        finally:
            server.terminate()
            server.wait()
        text = open(out).read()
    found = re.search(r"^(?:summary|totals): (\d+)", text, re.M)
    if found is None:
        raise RuntimeError("callgrind wrote no totals")
    return int(found.group(1)) / calls / per


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

    def batch(i: int) -> tuple[list[str], list[str]]:
        partition = i % keys.partitions
        users = [u for u in range(1, 1000) if keys.partition_of(u) == partition]
        run_keys = [keys.outbox(partition), keys.meta(partition), keys.totals(partition)]
        run_args = ["90000"]
        for j in range(BATCH_CHUNK):
            user = users[j % len(users)]
            idem = Idempotency("bench", f"batch-{i}-{j}-{rng.random()}")
            run_keys += [keys.idempotency_record(idem, partition)[0], keys.account(user)]
            run_args += ["deposit", f"fp{i}.{j} en", str(partition), str(user), "100", "bench"]
        return run_keys, run_args

    def floor(i: int) -> tuple[list[str], list[str]]:
        return [f"floor:{{u:{i % 100}}}:acct", "floor:outbox"], [str(i % 100), "100"]

    library = build_library()
    for name, command, call, per in (
        ("deposit function (lua/deposit.lua)", fcall(library.code, library.functions["deposit"]), deposit, 1),
        (
            f"batch function, per deposit of {BATCH_CHUNK}",
            fcall(library.code, library.functions[BATCH]),
            batch,
            BATCH_CHUNK,
        ),
        ("floor script (HINCRBY + XADD)", evalsha(FLOOR_SCRIPT), floor, 1),
    ):
        calls = max(1, args.calls // per)
        cost = instructions_per_call(command, call, calls, per)
        print(f"{name:45} {cost:10,.0f} instructions per {'deposit' if per > 1 else 'call'}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
