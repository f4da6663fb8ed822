"""Batch throughput: concurrent POST /v1/batch requests of 1000 deposits each, bodies built beforehand."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

import orjson


@dataclass
class BatchResult:
    """Operations per second over the run, and how many operations did not answer 201."""

    ops_per_second: float
    batches: int
    operations: int
    failures: int
    seconds: float
    client_cpu_us: float = 0.0  # this load generator's own CPU per operation (it shares the machine's cores)


def build_bodies(count: int, size: int, run_id: str, users: int) -> list[bytes]:
    bodies = []
    for b in range(count):
        operations = [
            {
                "op": "deposit",
                "idempotency_key": f"{run_id}-b{b}-{i}",
                "user_id": (b * size + i) % users + 1,
                "amount": "1.00",
                "comment": "bench",
            }
            for i in range(size)
        ]
        bodies.append(orjson.dumps({"operations": operations}))
    return bodies


# Each successful operation's result as the service writes it (orjson, compact): counted in the response
# bytes, so that the load generator spends no CPU parsing what it does not check.
_APPLIED = b'{"status":201,"body"'


class _Connection:
    """One keep-alive HTTP/1.1 connection sending prepared requests: the least CPU a sender can spend (the load
    generator shares the machine's cores with the service), where a general client parses and copies more."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    async def post(self, request: bytes) -> tuple[int, bytes]:
        """Send one request; the response's status and body (the service answers with a Content-Length)."""
        self.writer.write(request)
        head = await self.reader.readuntil(b"\r\n\r\n")
        status_line, _, header_lines = head.partition(b"\r\n")
        length = 0
        for line in header_lines.split(b"\r\n"):
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        return int(status_line.split()[1]), await self.reader.readexactly(length)


def _request(host: str, path: str, token: str, body: bytes) -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {token}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode() + body


async def send_bodies(url: str, token: str, bodies: list[bytes], concurrency: int, seconds: float) -> BatchResult:
    """Each body once, from `concurrency` connections, until `seconds` pass or the bodies run out."""
    address = urlsplit(url)
    host, port = address.hostname or "127.0.0.1", address.port or 80
    requests = [(_request(address.netloc, "/v1/batch", token, body), body.count(b'"op":')) for body in bodies]
    requests.reverse()
    done = failures = operations = 0
    connections = [_Connection(*await asyncio.open_connection(host, port)) for _ in range(concurrency)]
    deadline = time.monotonic() + seconds
    start, cpu = time.monotonic(), time.process_time()

    async def sender(connection: _Connection) -> None:
        nonlocal done, failures, operations
        while requests and time.monotonic() < deadline:
            request, sent = requests.pop()
            status, body = await connection.post(request)
            applied = body.count(_APPLIED) if status == 200 else 0
            done += 1
            operations += applied
            failures += sent - applied

    await asyncio.gather(*(sender(connection) for connection in connections))
    elapsed, cpu = time.monotonic() - start, time.process_time() - cpu
    for connection in connections:
        connection.writer.close()
    return BatchResult(operations / elapsed, done, operations, failures, elapsed, 1e6 * cpu / max(1, operations))


def run_batches(
    url: str, token: str, run_id: str, *, seconds: float, concurrency: int = 4, size: int = 1000, users: int = 1000
) -> BatchResult:
    """Send prepared batches from `concurrency` senders until `seconds` pass or the bodies run out."""
    bodies = build_bodies(max(8, int(seconds * 60)), size, run_id, users)  # enough for 60k ops/s
    return asyncio.run(send_bodies(url, token, bodies, concurrency, seconds))
