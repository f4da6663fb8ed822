"""Real servers for tests: a redis-server and a SecantusDB (MongoDB wire) server on free ports, and the app
served in the test's own process."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import redis
import tornado.httpserver
import tornado.web
from redis.backoff import NoBackoff
from redis.retry import Retry


@asynccontextmanager
async def served(app: tornado.web.Application, **options: Any) -> AsyncIterator[str]:
    """The application served in this process on a free 127.0.0.1 port (HTTPS with ssl_options), by its base
    URL; stopped, its connections closed, on the way out."""
    port = free_port()
    server = tornado.httpserver.HTTPServer(app, **options)
    server.listen(port, "127.0.0.1")
    try:
        yield f"{'https' if 'ssl_options' in options else 'http'}://127.0.0.1:{port}"
    finally:
        server.stop()
        await server.close_all_connections()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


class RedisServer:
    """A redis-server child process on a free port; optionally with AOF (appendfsync always) and further
    command-line options (`extra_args`, e.g. cluster mode)."""

    def __init__(
        self,
        aof: bool = False,
        directory: str | None = None,
        port: int | None = None,
        extra_args: Sequence[str] = (),
    ) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server binary not found (scripts/ensure-redis.sh installs it)")
        self.binary = binary
        self.port = port or free_port()
        self.aof = aof
        self.extra_args = list(extra_args)
        self.dir = directory or tempfile.mkdtemp(prefix="billing-redis-")
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        args = [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--dir", self.dir]
        if self.aof:
            args += ["--appendonly", "yes", "--appendfsync", "always"]
        else:
            args += ["--appendonly", "no"]
        self.proc = subprocess.Popen(args + self.extra_args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        # This loop is the retry: redis-py's default one backs off for up to a second or two per refused connect.
        client = redis.Redis(port=self.port, retry=Retry(NoBackoff(), 0))
        deadline = time.monotonic() + 10
        while True:
            try:
                if client.ping():
                    break
            except redis.ConnectionError:
                if self.proc.poll() is not None:
                    # Exited at once: a bad option, or the port was taken since it was chosen.
                    raise RuntimeError(f"redis-server on port {self.port} exited with {self.proc.returncode}") from None
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        client.close()
        return self

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.kill()


class MongoWireServer:
    """SecantusDB speaking the MongoDB wire protocol, in memory, on a free port."""

    def __init__(self, port: int | None = None, storage: str = ":memory:") -> None:
        self.port = port or free_port()
        self.storage = storage
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"mongodb://127.0.0.1:{self.port}/?directConnection=true"

    def start(self) -> MongoWireServer:
        launcher = Path(sys.executable).with_name("secantusd-py")
        self.log = tempfile.NamedTemporaryFile(prefix="secantus-", suffix=".log", delete=False)
        self.proc = subprocess.Popen(
            [
                str(launcher),
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--storage-path",
                self.storage,
                "--log-level",
                "WARNING",
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        import pymongo

        deadline = time.monotonic() + 30
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"SecantusDB exited: see {self.log.name}")
            try:
                client = pymongo.MongoClient(self.url, serverSelectionTimeoutMS=500)
                client.admin.command("ping")
                client.close()
                break
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
