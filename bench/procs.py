"""The processes under test: the floor app and `billing serve`, started on free 127.0.0.1 ports."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import IO

from tests.support.servers import free_port

BENCH_TOKEN = "bench-payments-token"
FLOOR_PATHS = {"post": "/deposit", "get": "/balance/%d"}
SERVICE_PATHS = {"post": "/v1/deposits", "get": "/v1/users/%d/balance", "many": "/v1/balances?user_ids="}
USERS = 1000  # the user ids the load touches (1 .. USERS)
_TICKS = os.sysconf("SC_CLK_TCK")


def process_cpu_seconds(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / _TICKS  # utime, stime


class Served:
    """A pre-forking HTTP server child: its URL, its worker pids, its memory."""

    def __init__(self, name: str, cmd: list[str], env: dict[str, str], probe: str, log: IO[bytes]) -> None:
        self.name = name
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.probe = probe
        self.proc = subprocess.Popen(
            [*cmd, "--port", str(self.port)], env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )

    def wait_ready(self, workers: int, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}")
            try:
                request = urllib.request.Request(
                    self.url + self.probe, headers={"Authorization": f"Bearer {BENCH_TOKEN}"}
                )
                with urllib.request.urlopen(request, timeout=2):
                    pass
                if len(self.worker_pids()) >= workers:
                    return
            except urllib.error.HTTPError:
                if len(self.worker_pids()) >= workers:
                    return
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.name} not ready after {timeout} s")
            time.sleep(0.2)

    def worker_pids(self) -> list[int]:
        children = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children")
        try:
            pids = sorted(int(pid) for pid in children.read_text().split())
        except OSError:
            return []
        return pids or [self.proc.pid]  # one worker: the server process serves itself

    def rss_kib(self) -> dict[int, int]:
        """VmRSS of each worker in KiB."""
        out = {}
        for pid in self.worker_pids():
            try:
                for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                    if line.startswith("VmRSS:"):
                        out[pid] = int(line.split()[1])
            except OSError:
                continue
        return out

    def cpu_seconds(self) -> float:
        """User + system CPU time used so far by all workers."""
        return sum(process_cpu_seconds(pid) for pid in self.worker_pids())

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


def start_floor(redis_url: str, workers: int, log: IO[bytes]) -> Served:
    cmd = [sys.executable, "-m", "bench.floor_app", "--workers", str(workers), "--redis-url", redis_url]
    return Served("floor", cmd, dict(os.environ), "/balance/1", log)


def start_service(
    redis_url: str, mongo_url: str, workers: int, log: IO[bytes], extra_env: dict[str, str] | None = None
) -> Served:
    env = dict(os.environ)
    for key in [k for k in env if k.startswith("BILLING_")]:
        del env[key]
    env.update(
        BILLING_REDIS_URL=redis_url,
        BILLING_MONGO_URL=mongo_url,
        BILLING_TOKENS=json.dumps({BENCH_TOKEN: ["payments"]}),
        BILLING_SECRET="bench-secret",
        BILLING_CONFIG_FILE="/dev/null",
    )
    env.update(extra_env or {})
    billing = str(Path(sys.executable).with_name("billing"))
    return Served("service", [billing, "serve", "--host", "127.0.0.1", "--workers", str(workers)], env, "/healthz", log)
