"""X-Forwarded-* behind a TLS proxy: believed from BILLING_TRUSTED_PROXIES only (Secure cookies, HSTS, log, links)."""

from __future__ import annotations

import io
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import contextmanager
from http.cookies import SimpleCookie

import orjson
import pytest
import tornado.httpserver
from pydantic import ValidationError

from billing.app import make_app
from billing.bootstrap import Context
from billing.core.config import Settings
from billing.infra.observability import configure_access_log
from tests.support.api import Api
from tests.support.console import ConsoleClient, Page
from tests.support.servers import free_port

PROXY_HEADERS = {
    "X-Forwarded-Proto": "https",
    "X-Forwarded-For": "198.51.100.7, 203.0.113.9",  # the client claimed the first; the proxy saw the second
    "X-Forwarded-Host": "billing.example.com",
}
HSTS = "Strict-Transport-Security"

Serve = Callable[[str], Awaitable[str]]


@pytest.fixture
async def serve(ctx: Context, settings: Settings) -> AsyncIterator[Serve]:
    """Start the app with BILLING_TRUSTED_PROXIES set to the given value; returns its base URL."""
    servers: list[tornado.httpserver.HTTPServer] = []

    async def start(trusted: str) -> str:
        ctx.settings = Settings(**{**settings.model_dump(), "trusted_proxies": trusted}, _env_file=None)
        port = free_port()
        server = tornado.httpserver.HTTPServer(make_app(ctx))
        server.listen(port, "127.0.0.1")
        servers.append(server)
        return f"http://127.0.0.1:{port}"

    yield start
    for server in servers:
        server.stop()
        await server.close_all_connections()


def cookie(page: Page, name: str) -> tuple[SimpleCookie, str]:
    for raw in page.set_cookies:
        parsed = SimpleCookie(raw)
        if name in parsed:
            return parsed[name], raw
    raise AssertionError(f"no Set-Cookie for {name}: {page.set_cookies}")


async def sign_in(base_url: str, headers: dict[str, str]) -> tuple[ConsoleClient, Page, Page]:
    """(client, the sign-in form page, the sign-in answer), every request with these headers."""
    client = ConsoleClient(base_url)
    login = await client.get("/console/login", headers=headers)
    answer = await client.post(
        "/console/login", {"_xsrf": login.xsrf, "token": "tok-admin", "next": "/console"}, headers=headers
    )
    assert answer.status == 303, answer.text
    return client, login, answer


@contextmanager
def access_lines() -> Iterator[list[dict]]:
    stream = io.StringIO()
    logger = logging.getLogger("billing.access")
    saved = (list(logger.handlers), logger.propagate, logger.level)
    configure_access_log(stream)
    lines: list[dict] = []
    try:
        yield lines
        for handler in logger.handlers:
            handler.flush()  # lines are gathered for a few ms before they are written
    finally:
        logger.handlers[:], logger.propagate, logger.level = saved
    lines.extend(orjson.loads(line) for line in stream.getvalue().splitlines())


async def revenue_link(base_url: str, headers: dict[str, str]) -> tuple[str, dict]:
    api = Api(base_url)
    try:
        answer = await api.get("/v1/reports/revenue?month=2026-11", token="tok-accounting", headers=headers)
    finally:
        api.close()
    assert answer.status == 200, answer.body
    return answer.json["url"], dict(answer.headers)


async def test_a_trusted_proxy_makes_cookies_secure_and_adds_hsts(serve: Serve) -> None:
    base_url = await serve("127.0.0.1")
    client, login, answer = await sign_in(base_url, PROXY_HEADERS)
    try:
        session, raw = cookie(answer, "console_session")
        assert session["secure"] and "Secure" in raw and session["httponly"] and session["samesite"] == "Strict"
        xsrf, raw_xsrf = cookie(login, "console_xsrf")
        assert xsrf["secure"] and "Secure" in raw_xsrf
        assert login.headers[HSTS].startswith("max-age=") and answer.headers[HSTS].startswith("max-age=")
        css = await client.get("/console/static/console.css", headers=PROXY_HEADERS)
        assert css.status == 200 and HSTS in css.headers
        missing = await client.get("/console/nowhere", headers=PROXY_HEADERS)
        assert missing.status == 404 and HSTS in missing.headers  # error pages too
        plain = await client.get("/console/login", headers={"X-Forwarded-Proto": "http"})
        assert HSTS not in plain.headers  # the proxy says this one came over plain HTTP
    finally:
        client.close()


async def test_forwarded_headers_from_an_untrusted_peer_are_ignored(serve: Serve) -> None:
    for trusted in ("", "10.0.0.0/8, 192.0.2.1"):  # nobody, or proxies that are not this peer
        base_url = await serve(trusted)
        with access_lines() as lines:
            client, login, answer = await sign_in(base_url, PROXY_HEADERS)
            client.close()
        session, raw = cookie(answer, "console_session")
        assert not session["secure"] and "Secure" not in raw
        assert HSTS not in login.headers and HSTS not in answer.headers
        assert {line["remote_ip"] for line in lines} == {"127.0.0.1"}
        url, headers = await revenue_link(base_url, PROXY_HEADERS)
        assert url.startswith(base_url + "/v1/reports/revenue/2026-11.csv?"), url
        assert HSTS not in headers


async def test_access_log_and_report_links_use_the_trusted_proxys_headers(serve: Serve) -> None:
    base_url = await serve("10.0.0.0/8, 127.0.0.0/8")
    with access_lines() as lines:
        client, _, _ = await sign_in(base_url, PROXY_HEADERS)
        client.close()
        behind_two = {**PROXY_HEADERS, "X-Forwarded-For": "198.51.100.7, 10.1.2.3"}  # client, then a trusted hop
        url, headers = await revenue_link(base_url, behind_two)
        garbled = {**PROXY_HEADERS, "X-Forwarded-For": "not-an-ip"}
        await revenue_link(base_url, garbled)
    assert [line["remote_ip"] for line in lines] == ["203.0.113.9", "203.0.113.9", "198.51.100.7", "127.0.0.1"]
    assert url.startswith("https://billing.example.com/v1/reports/revenue/2026-11.csv?"), url
    assert headers[HSTS].startswith("max-age=")
    odd_host = {**PROXY_HEADERS, "X-Forwarded-Host": "evil.example/path?"}  # not a host[:port]: the Host stays
    url, _ = await revenue_link(base_url, odd_host)
    assert url.startswith("https://127.0.0.1:"), url


async def test_public_url_wins_over_forwarded_host(serve: Serve, ctx: Context) -> None:
    base_url = await serve("127.0.0.1")
    ctx.reports.settings = ctx.settings.model_copy(update={"public_url": "https://pay.example.org"})
    url, _ = await revenue_link(base_url, PROXY_HEADERS)
    assert url.startswith("https://pay.example.org/v1/reports/revenue/2026-11.csv?"), url


async def test_direct_https_gets_hsts(https_console: ConsoleClient) -> None:
    login = await https_console.get("/console/login", headers={"X-Forwarded-Proto": "http"})  # untrusted: ignored
    assert login.headers[HSTS].startswith("max-age=")
    assert cookie(login, "console_xsrf")[0]["secure"]


def test_trusted_proxies_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("BILLING_TRUSTED_PROXIES", raising=False)
    assert Settings(_env_file=None).trusted_proxies == ()  # default: trust nobody
    monkeypatch.setenv("BILLING_TRUSTED_PROXIES", " 10.0.0.0/8, 127.0.0.1,::1 ,")
    assert [str(n) for n in Settings(_env_file=None).trusted_proxies] == ["10.0.0.0/8", "127.0.0.1/32", "::1/128"]
    for bad in ("10.0.0.1/8", "proxy.local", "10.0.0.0/33"):
        monkeypatch.setenv("BILLING_TRUSTED_PROXIES", bad)
        with pytest.raises(ValidationError, match="BILLING_TRUSTED_PROXIES"):
            Settings(_env_file=None)
