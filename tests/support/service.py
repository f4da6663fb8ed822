"""The service as a real `billing serve` subprocess in its own process group, killable and restartable."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests

from tests.support.servers import free_port

PROJECT_ROOT = Path(__file__).resolve().parent.parent.parent


class BillingProcess:
    """`python -m billing serve --workers N` on a fixed port; start() again after kill() reuses the port."""

    def __init__(
        self,
        redis_url: str,
        mongo_url: str,
        tokens: dict[str, list[str]],
        workers: int = 2,
        mongo_db: str = "billing",
        port: int | None = None,
        extra_env: dict[str, str] | None = None,
    ) -> None:
        self.port = port or free_port()
        self.workers = workers
        self.env = {
            **os.environ,
            "BILLING_REDIS_URL": redis_url,
            "BILLING_MONGO_URL": mongo_url,
            "BILLING_MONGO_DB": mongo_db,
            "BILLING_TOKENS": json.dumps(tokens),
            "BILLING_SECRET": "crash-test-secret",
            "BILLING_LOG_REQUESTS": "false",
            "BILLING_LOG_LEVEL": "WARNING",
            "BILLING_CONFIG_FILE": os.devnull,
            # Its own report cache: never the user's ~/.cache, shared with other test processes and `make run`
            "BILLING_REPORTS_DIR": tempfile.mkdtemp(prefix="billing-reports-"),
            **(extra_env or {}),
        }
        self.proc: subprocess.Popen | None = None
        self.log = tempfile.NamedTemporaryFile(prefix="billing-serve-", suffix=".log", delete=False)
        self.starts = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, wait: bool = True) -> BillingProcess:
        command = [sys.executable, "-m", "billing", "serve", "--host", "127.0.0.1"]
        command += ["--port", str(self.port), "--workers", str(self.workers)]
        self.proc = subprocess.Popen(
            command,
            env=self.env,
            cwd=PROJECT_ROOT,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            process_group=0,  # its own group: kill_group() reaches the supervisor and every worker
        )
        self.starts += 1
        if wait:
            self.wait_ready()
        return self

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Until /healthz answers (the process is up; the stores may still be down)."""
        deadline = time.monotonic() + timeout
        while True:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"billing serve exited with {self.proc.returncode}: see {self.log.name}")
            try:
                if requests.get(self.url + "/healthz", timeout=1).status_code == 200:
                    return
            except requests.RequestException:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"billing serve did not answer in {timeout}s: see {self.log.name}")
            time.sleep(0.05)

    def worker_pids(self) -> list[int]:
        """The supervisor's children (the workers), read from /proc."""
        assert self.proc is not None
        pid = self.proc.pid
        try:
            children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        except FileNotFoundError:
            return []
        return [int(child) for child in children]

    def kill_worker(self, pid: int) -> None:
        os.kill(pid, signal.SIGKILL)

    def kill_group(self) -> None:
        """SIGKILL the supervisor and every worker at once: no shutdown code runs."""
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()
        # Workers are reaped by init once the supervisor is gone; wait until none is left in the group.
        deadline = time.monotonic() + 10
        while _group_alive(self.proc.pid) and time.monotonic() < deadline:
            time.sleep(0.02)

    def stop(self) -> None:
        """SIGTERM (graceful), then SIGKILL of the group if it takes too long."""
        if self.proc is None or self.proc.poll() is not None:
            self.kill_group()
            return
        self.proc.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=15)
        self.kill_group()

    def log_text(self) -> str:
        return Path(self.log.name).read_text(errors="replace")


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
