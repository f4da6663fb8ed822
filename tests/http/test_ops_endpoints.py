"""/openapi.json, /docs, /metrics and the access log, against a live app."""

from __future__ import annotations

import io
import logging
import re
from collections.abc import Iterator

import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from billing.api.auth import token_digest
from billing.infra.observability import configure_access_log
from tests.support.api import Api


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def value(text: str, name: str, **labels: str) -> float:
    return samples(text).get((name, tuple(sorted(labels.items()))), 0.0)


async def test_openapi_json_is_served_without_token(api: Api) -> None:
    r = await api.get("/openapi.json", token=None)
    assert r.status == 200
    assert r.content_type.startswith("application/json")
    spec = r.json
    assert spec["openapi"] == "3.1.0"
    assert "/v1/deposits" in spec["paths"]


async def test_docs_page_uses_only_local_assets(api: Api) -> None:
    r = await api.get("/docs", token=None)
    assert r.status == 200
    assert r.content_type.startswith("text/html")
    html = r.body.decode()
    assert "http://" not in html and "https://" not in html and "//cdn" not in html
    assert '"/openapi.json"' in html
    assets = re.findall(r'(?:src|href)="([^"]+)"', html)
    assert any(a.endswith("swagger-ui-bundle.js") for a in assets)
    assert any(a.endswith("swagger-ui.css") for a in assets)
    for asset in assets:
        assert asset.startswith("/docs/static/"), asset
        got = await api.get(asset, token=None)
        assert got.status == 200 and len(got.body) > 0, asset
    bundle = await api.get("/docs/static/swagger-ui-bundle.js", token=None)
    assert b"isOAS31" in bundle.body  # Swagger UI 5: renders OpenAPI 3.1 documents
    assert (await api.get("/docs/static/../../../etc/passwd", token=None)).status in (403, 404)


async def test_metrics_count_requests_by_route_template_and_status(api: Api) -> None:
    await api.deposit(5, "10.00")
    await api.get("/v1/users/5/balance", token="tok-payments")
    await api.get("/v1/users/6/balance", token="tok-payments")
    await api.get("/no/such/route", token=None)
    r = await api.get("/metrics", token=None)
    assert r.status == 200
    assert r.content_type.startswith("text/plain")
    text = r.body.decode()
    assert value(text, "billing_http_requests_total", route="/v1/deposits", method="POST", status="201") == 1
    balance = "/v1/users/{user_id}/balance"
    assert value(text, "billing_http_requests_total", route=balance, method="GET", status="200") == 1
    assert value(text, "billing_http_requests_total", route=balance, method="GET", status="404") == 1
    assert value(text, "billing_http_requests_total", route="(unmatched)", method="GET", status="404") == 1
    assert value(text, "billing_http_request_duration_seconds_count", route=balance, method="GET", status="404") == 1
    assert not any("/v1/users/5" in line for line in text.splitlines())  # templates, never raw paths
    assert value(text, "billing_outbox_lag_up") in (0.0, 1.0)


async def test_metrics_count_operation_outcomes(api: Api) -> None:
    await api.deposit(7, "10.00", key="k-1")
    await api.deposit(7, "10.00", key="k-1")  # a replay
    await api.post("/v1/withdrawals", {"user_id": 7, "amount": "50.00"}, token="tok-payments")
    await api.post("/v1/withdrawals", {"user_id": 8, "amount": "1.00"}, token="tok-payments")
    await api.post(
        "/v1/batch",
        {"operations": [{"op": "deposit", "user_id": 7, "amount": "1.00"}]},
        token="tok-payments",
    )
    text = (await api.get("/metrics", token=None)).body.decode()
    ops = "billing_operations_total"
    assert value(text, ops, operation="deposit", code="ok", replayed="false") == 2
    assert value(text, ops, operation="deposit", code="ok", replayed="true") == 1
    assert value(text, ops, operation="withdrawal", code="insufficient_funds", replayed="false") == 1
    assert value(text, ops, operation="withdrawal", code="account_not_found", replayed="false") == 1


class _FlushedLines(io.StringIO):
    """The access log stream; reading it first writes the lines the handler still gathers."""

    def getvalue(self) -> str:
        for handler in logging.getLogger("billing.access").handlers:
            handler.flush()
        return super().getvalue()


@pytest.fixture
def access_lines() -> Iterator[io.StringIO]:
    stream = _FlushedLines()
    logger = logging.getLogger("billing.access")
    saved = (list(logger.handlers), logger.propagate, logger.level)
    configure_access_log(stream)
    yield stream
    logger.handlers[:], logger.propagate, logger.level = saved


async def test_access_log_is_one_json_line_per_request_without_the_token(
    api: Api, access_lines: io.StringIO, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="tornado.access")
    await api.post(
        "/v1/withdrawals",
        {"user_id": 99, "amount": "1.00"},
        token="tok-payments",
        headers={"X-Request-ID": "req-abc-1"},
    )
    await api.get("/healthz", token=None)
    lines = [orjson.loads(line) for line in access_lines.getvalue().splitlines()]
    assert len(lines) == 2
    first = lines[0]
    assert first["method"] == "POST"
    assert first["route"] == "/v1/withdrawals"
    assert first["path"] == "/v1/withdrawals"
    assert first["status"] == 404
    assert first["code"] == "account_not_found"
    assert first["request_id"] == "req-abc-1"
    assert first["token"] == token_digest("tok-payments").hex()[:12]
    assert isinstance(first["duration_ms"], float) and first["duration_ms"] >= 0
    assert "tok-payments" not in access_lines.getvalue()
    assert lines[1]["route"] == "/healthz" and lines[1]["token"] is None and "code" not in lines[1]
    assert len(lines[1]["request_id"]) == 32  # generated when absent
    assert [r for r in caplog.records if r.name == "tornado.access"] == []
