"""Invented methods and oversized bodies over a real socket: problem+json answers, bounded metrics, nothing changed."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from urllib.parse import urlsplit

import orjson
import pytest

from billing.api.handlers.base import BODY_LIMIT
from billing.api.handlers.batch import BATCH_BODY_LIMIT
from billing.bootstrap import Context
from billing.core.config import Settings
from billing.server import MAX_BODY_BYTES
from tests.support.api import Api, Response, problem
from tests.support.state import changed_keys, redis_state

INVENTED = ["ZZQ", "BREW", "PROPFIND", "X-" + "Y" * 40]
MIB = 1024 * 1024


@pytest.fixture
def redis_backend() -> str:
    return "fakeredis"  # HTTP framing only: one Redis flavour is enough


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """No background projector here: the outbox keeps every entry, so a snapshot shows any write at all."""
    return settings.model_copy(update={"projector_enabled": False})


async def exchange(api: Api, head: bytes, body: bytes = b"") -> Response:
    """Send raw bytes on a fresh connection and read one answer; the body is sent only if given."""
    url = urlsplit(api.base_url)
    reader, writer = await asyncio.open_connection(url.hostname, url.port)
    try:
        writer.write(head + body)
        await writer.drain()
        status_line = await asyncio.wait_for(reader.readline(), 30)
        headers: dict[str, str] = {}
        while (line := await reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode("latin1").partition(":")
            headers[name.strip()] = value.strip()
        payload = await reader.readexactly(int(headers.get("Content-Length", "0")))
        return Response(int(status_line.split()[1]), _Headers(headers), payload)
    finally:
        writer.close()


class _Headers(dict):
    def get(self, name: str, default: str = "") -> str:  # type: ignore[override]
        for key, value in self.items():
            if key.lower() == name.lower():
                return value
        return default

    def __getitem__(self, name: str) -> str:
        return self.get(name)


def request_head(method: str, path: str, headers: dict[str, str]) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: test", *(f"{k}: {v}" for k, v in headers.items())]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


async def metrics_text(api: Api) -> str:
    r = await api.get("/metrics", token=None)
    assert r.status == 200
    return r.body.decode()


async def until(condition: Callable[[], bool]) -> None:
    while not condition():
        await asyncio.sleep(0.01)


def in_flight(text: str) -> float:
    line = next(x for x in text.splitlines() if x.startswith("billing_http_requests_in_flight "))
    return float(line.split()[1])


# ---- 1. invented methods -------------------------------------------------------------------------


async def test_invented_methods_get_405_and_share_one_metrics_label(api: Api, ctx: Context) -> None:
    for method in INVENTED:
        for path in ("/healthz", "/v1/deposits", "/no/such/route"):
            r = await exchange(api, request_head(method, path, {"Connection": "close"}))
            problem(r, 405, "method_not_allowed")
            assert r.headers.get("X-Request-ID")
    text = await metrics_text(api)
    for method in INVENTED:
        assert method not in text
    assert 'method="other"' in text
    assert in_flight(text) == 1.0  # the scrape itself
    assert ctx.request_observer.in_flight == 0


# ---- 2. bodies over the route's limit ------------------------------------------------------------


def post_head(path: str, length: int | None, token: str = "tok-admin") -> bytes:
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    if length is None:
        headers["Transfer-Encoding"] = "chunked"
    else:
        headers["Content-Length"] = str(length)
    return request_head("POST", path, headers)


HUGE = [MAX_BODY_BYTES + MIB, 100 * MIB, 2**62]  # over the server's own limit: never read


@pytest.mark.parametrize("path", ["/v1/deposits", "/v1/batch"])
@pytest.mark.parametrize("size", HUGE, ids=[str(s) for s in HUGE])
async def test_a_huge_declared_length_gets_413_before_any_body_is_sent(
    api: Api, ctx: Context, path: str, size: int
) -> None:
    prefix = ctx.settings.redis_prefix
    await api.deposit(1, "5.00")
    before = await redis_state(ctx.redis, prefix)
    r = await exchange(api, post_head(path, size))  # the headers only
    problem(r, 413, "payload_too_large")
    assert changed_keys(before, await redis_state(ctx.redis, prefix)) == []
    assert ctx.request_observer.in_flight == 0
    assert (await api.balance(1)).json["available"] == "5.00"


@pytest.mark.parametrize("path,limit", [("/v1/deposits", BODY_LIMIT), ("/v1/batch", BATCH_BODY_LIMIT)])
async def test_a_length_over_the_limit_awaiting_100_continue_gets_413_at_once(api: Api, path: str, limit: int) -> None:
    r = await exchange(api, post_head(path, limit + 1)[:-2] + b"Expect: 100-continue\r\n\r\n")
    problem(r, 413, "payload_too_large")
    assert str(limit) in r.json["detail"]


@pytest.mark.parametrize("path,limit", [("/v1/deposits", BODY_LIMIT), ("/v1/batch", BATCH_BODY_LIMIT)])
async def test_a_body_over_the_limit_sent_with_its_headers_gets_413(
    api: Api, ctx: Context, path: str, limit: int
) -> None:
    body = orjson.dumps({"user_id": 1, "amount": "1.00"})
    body += b" " * (limit + 1 - len(body))
    r = await exchange(api, post_head(path, len(body)), body)
    problem(r, 413, "payload_too_large")
    assert str(limit) in r.json["detail"]
    assert (await api.balance(1)).status == 404
    assert ctx.request_observer.in_flight == 0


async def test_a_refusal_from_the_headers_reaches_a_client_that_sent_its_body_too(api: Api) -> None:
    body = b'{"user_id": 1, "amount": "1.00"}' + b" " * 60000
    r = await exchange(api, post_head("/v1/deposits", len(body), token="wrong-token"), body)
    problem(r, 401, "unauthenticated")
    assert (await api.balance(1)).status == 404


async def test_a_chunked_body_growing_over_the_limit_gets_413_and_is_not_buffered(api: Api, ctx: Context) -> None:
    """No Content-Length: the body is counted as it arrives and refused once it passes the limit."""
    url = urlsplit(api.base_url)
    reader, writer = await asyncio.open_connection(url.hostname, url.port)
    try:
        writer.write(post_head("/v1/deposits", None))
        chunk = b"x" * 16384
        for _ in range(BODY_LIMIT // len(chunk)):  # never the terminating chunk: only the limit ends it
            writer.write(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
        # The chunk that passes the limit, without its CRLF: nothing is left unread when the server answers.
        writer.write(f"{len(chunk):x}\r\n".encode() + chunk)
        await writer.drain()
        # (a server still waiting for the rest of the body would hang here: wait_for fails the test instead)
        status_line = await asyncio.wait_for(reader.readline(), 30)
        rest = await asyncio.wait_for(reader.read(), 30)  # the server answers, then closes the connection
    finally:
        writer.close()
    assert status_line.split()[1] == b"413", status_line
    assert b"payload_too_large" in rest and b"application/problem+json" in rest
    assert ctx.request_observer.in_flight == 0
    assert (await api.balance(1)).status == 404


async def test_a_chunked_body_within_the_limit_is_served(api: Api) -> None:
    body = orjson.dumps({"user_id": 1, "amount": "2.50"})
    chunks = b"".join(f"{len(part):x}\r\n".encode() + part + b"\r\n" for part in (body[:5], body[5:]))
    r = await exchange(api, post_head("/v1/deposits", None, token="tok-payments"), chunks + b"0\r\n\r\n")
    assert r.status == 201, r.body
    assert (await api.balance(1)).json["available"] == "2.50"


async def test_a_client_leaving_mid_body_is_not_left_in_flight(api: Api, ctx: Context) -> None:
    """A chunked body is served as it arrives (counted in flight from its headers); the closed connection ends it."""
    url = urlsplit(api.base_url)
    reader, writer = await asyncio.open_connection(url.hostname, url.port)
    writer.write(post_head("/v1/deposits", None) + b"e\r\n" + b'{"user_id": 1,')
    await writer.drain()
    observer = ctx.request_observer
    await asyncio.wait_for(until(lambda: observer.in_flight == 1), 10)  # the headers arrived: being served
    writer.close()
    await asyncio.wait_for(until(lambda: observer.in_flight == 0), 10)  # the closed connection ends it
    assert in_flight(await metrics_text(api)) == 1.0
    assert (await api.balance(1)).status == 404


async def test_a_sized_body_within_the_limit_is_read_whole_before_it_is_served(api: Api, ctx: Context) -> None:
    """Its handler starts only once the body is complete, so a client leaving mid-body never started one."""
    url = urlsplit(api.base_url)
    body = orjson.dumps({"user_id": 1, "amount": "1.00"})
    reader, writer = await asyncio.open_connection(url.hostname, url.port)
    writer.write(post_head("/v1/deposits", len(body), token="tok-payments") + body[:10])
    await writer.drain()
    observer = ctx.request_observer
    await asyncio.sleep(0.2)
    assert observer.in_flight == 0  # waiting for the rest of the body: no handler yet
    writer.write(body[10:])
    await writer.drain()
    status_line = await asyncio.wait_for(reader.readline(), 30)
    writer.close()
    assert status_line.split()[1] == b"201", status_line
    assert (await api.balance(1)).json["available"] == "1.00"


def test_the_in_flight_count_moves_only_for_requests_it_counted() -> None:
    """A request refused before it started (an invented method) or ended twice cannot uncount another one."""
    from types import SimpleNamespace

    from billing.infra.observability import RequestObserver

    observer = RequestObserver(None, log_requests=False)
    request = SimpleNamespace(method="ZZQ", path="/healthz", request_time=lambda: 0.0, remote_ip="127.0.0.1")
    counted, uncounted = SimpleNamespace(request=request), SimpleNamespace(request=request)
    for handler in (counted, uncounted):
        handler.get_status = lambda: 405
    observer.started(counted)
    observer.finished(uncounted)
    assert observer.in_flight == 1
    observer.abandoned(counted)
    observer.finished(counted)
    assert observer.in_flight == 0
