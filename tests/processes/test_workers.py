"""`billing serve --workers 2`: both workers take connections, each with its own store clients."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from billing.server import bind_worker_sockets
from tests.support.servers import MongoWireServer, RedisServer, free_port


def test_worker_slots_share_one_port_with_reuseport() -> None:
    slots = bind_worker_sockets("127.0.0.1", 0, 3)
    try:
        assert len(slots) == 3
        ports = {sock.getsockname()[1] for group in slots for sock in group}
        assert len(ports) == 1
        assert len({id(sock) for group in slots for sock in group}) == 3
        for group in slots:
            assert all(sock.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT) for sock in group)
    finally:
        for group in slots:
            for sock in group:
                sock.close()
    single = bind_worker_sockets("127.0.0.1", 0, 1)
    assert len(single) == 1
    for sock in single[0]:
        sock.close()


def _call(url: str, method: str = "GET", body: dict | None = None, key: str | None = None) -> tuple[int, dict, str]:
    headers = {"Authorization": "Bearer t-pay", "Connection": "close"}
    data = None
    if body is not None:
        data = json.dumps(body).encode()
        headers["Content-Type"] = "application/json"
    if key:
        headers["Idempotency-Key"] = key
    request = urllib.request.Request(url, data=data, method=method, headers=headers)
    with urllib.request.urlopen(request, timeout=10) as response:
        return response.status, json.loads(response.read()), response.headers["X-Request-ID"]


def test_two_workers_both_serve_money_operations(redis_server: RedisServer, mongo_server: MongoWireServer) -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("BILLING_")}
    env.update(
        BILLING_REDIS_URL=redis_server.url,
        BILLING_MONGO_URL=mongo_server.url,
        BILLING_REDIS_PREFIX=f"workers-{port}:",
        BILLING_TOKENS=json.dumps({"t-pay": ["payments"]}),
        BILLING_SECRET="s",
        BILLING_CONFIG_FILE="/dev/null",
        BILLING_LOG_LEVEL="WARNING",
    )
    billing = str(Path(sys.executable).with_name("billing"))
    proc = subprocess.Popen(
        [billing, "serve", "--host", "127.0.0.1", "--port", str(port), "--workers", "2"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(base + "/healthz", timeout=1).close()
                break
            except OSError:
                assert proc.poll() is None and time.monotonic() < deadline, "service did not start"
                time.sleep(0.2)
        prefixes = set()
        for n in range(40):  # a new connection each time: the kernel spreads them over the workers
            status, body, request_id = _call(base + "/v1/deposits", "POST", {"user_id": 1, "amount": "1.00"}, f"k{n}")
            assert status == 201
            prefixes.add(request_id[:16])  # request ids start with a per-process random prefix
        assert len(prefixes) == 2, "both workers should have taken connections"
        status, body, _ = _call(base + "/v1/users/1/balance")
        assert status == 200 and body["available"] == "40.00"
        status, body, _ = _call(base + "/v1/deposits", "POST", {"user_id": 1, "amount": "1.00"}, "k0")
        assert status == 201 and body["balance"]["available"] == "1.00"  # replay from either worker
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=20)
