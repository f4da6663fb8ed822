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
import redis.asyncio

from bench.floor_app import SCRIPT as FLOOR_SCRIPT
from billing.ledger.scripts import BATCH, BATCH_CHUNK, Idempotency, Ledger
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
    # The calls as the service builds them (an unconnected client: nothing is sent through it). One Redis: each
    # record at its key's home, as the service lays them out.
    ledger = Ledger(redis.asyncio.Redis(), "billing:", 90_000)
    keys = ledger.keys
    rng = random.Random(7)
    users_of = {p: [u for u in range(1, 1000) if keys.partition_of(u) == p] for p in keys.all()}

    def split(parts: list[str]) -> tuple[list[str], list[str]]:
        """An FCALL's keys and arguments (FCALL <function> <numkeys> <keys...> <args...>)."""
        numkeys = int(parts[2])
        return parts[3 : 3 + numkeys], parts[3 + numkeys :]

    def deposit(i: int) -> tuple[list[str], list[str]]:
        name, op_keys, op_args = ledger.deposit_call(i % 100 + 1, 100, "bench")
        idem = Idempotency("bench", f"key-{i}-{rng.random()}")
        return split(ledger.script_call(name, idem, f"fp{i} en", op_keys, op_args))

    def batch(i: int) -> tuple[list[str], list[str]]:
        users = users_of[i % keys.partitions]
        calls = []
        for j in range(BATCH_CHUNK):
            name, op_keys, op_args = ledger.deposit_call(users[j % len(users)], 100, "bench")
            calls.append(
                (name, Idempotency("bench", f"batch-{i}-{j}-{rng.random()}"), f"fp{i}.{j} en", op_keys, op_args)
            )
        return split(ledger.batch_command(calls))

    def floor(i: int) -> tuple[list[str], list[str]]:
        return [f"floor:{{u:{i % 100}}}:acct", "floor:outbox"], [str(i % 100), "100"]

    library = ledger.library
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
