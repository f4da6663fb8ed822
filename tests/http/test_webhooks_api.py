"""The webhook admin endpoints: PUT, GET, DELETE /v1/webhooks/{name} and GET /v1/webhooks; bad input changes
nothing; URLs pointing at loopback, private or link-local addresses are refused unless the setting allows them."""

from __future__ import annotations

from typing import Any

import pytest

from billing.bootstrap import Context
from billing.core.config import Settings
from billing.views.events import EventCursor
from tests.support.api import Api, problem
from tests.support.workload import deposit

PUBLIC = "http://93.184.216.34/billing-hooks"  # an address literal: no DNS needed


async def ok(response: Any, status: int = 200) -> Any:
    assert response.status == status, response.body
    return response.json


async def test_create_read_update_delete(api: Api, ctx: Context) -> None:
    created = await ok(await api.put("/v1/webhooks/orders-1", {"url": PUBLIC}))
    assert set(created) == {"name", "url", "types", "secret", "created_at"}
    assert created["name"] == "orders-1" and created["url"] == PUBLIC and created["types"] is None
    assert len(created["secret"]) >= 40

    updated = await ok(
        await api.put("/v1/webhooks/orders-1", {"url": PUBLIC + "/v2", "types": ["charge", "deposit", "charge"]})
    )
    assert updated["secret"] is None  # shown on creation only
    assert updated["created_at"] == created["created_at"] and updated["types"] == ["charge", "deposit"]

    listing = await ok(await api.get("/v1/webhooks"))
    assert listing == {
        "items": [
            {
                "name": "orders-1",
                "url": PUBLIC + "/v2",
                "types": ["charge", "deposit"],
                "created_at": created["created_at"],
            }
        ]
    }
    status = await ok(await api.get("/v1/webhooks/orders-1"))
    assert status["pending"] == 0 and status["attempts"] == 0
    assert status["last_error"] is None and status["last_attempt_at"] is None and status["last_success_at"] is None
    assert EventCursor("test-secret", ctx.ledger.keys.partitions).decode(status["delivered_through"]) == [0] * 16
    # The secret is kept across the update and never shown again.
    state = await ctx.webhooks.store.get("orders-1")
    assert state is not None and state.secret == created["secret"]
    assert "secret" not in status

    response = await api.delete("/v1/webhooks/orders-1")
    assert response.status == 204 and response.body == b""
    problem(await api.get("/v1/webhooks/orders-1"), 404, "webhook_not_found")
    problem(await api.delete("/v1/webhooks/orders-1"), 404, "webhook_not_found")
    assert await ok(await api.get("/v1/webhooks")) == {"items": []}
    again = await ok(await api.put("/v1/webhooks/orders-1", {"url": PUBLIC}))
    assert again["secret"] and again["secret"] != created["secret"]


async def test_a_new_webhook_starts_after_the_events_made_so_far(api: Api, ctx: Context) -> None:
    await deposit(ctx.ledger, 1, 100)
    await deposit(ctx.ledger, 2, 100)
    await ctx.projector.drain()
    await ok(await api.put("/v1/webhooks/late", {"url": PUBLIC, "types": ["withdrawal"]}))
    assert ctx.webhook_dispatcher is not None
    await ctx.webhook_dispatcher.stop()  # (no delivery to the public address from a test)
    status = await ok(await api.get("/v1/webhooks/late"))
    assert status["pending"] == 0
    await deposit(ctx.ledger, 3, 100)
    await ctx.projector.drain()
    assert (await ok(await api.get("/v1/webhooks/late")))["pending"] == 1
    metrics = (await api.get("/metrics", token=None)).body.decode()
    assert 'billing_webhook_pending_events{webhook="late"} 1.0' in metrics


BAD_BODIES = [
    ({}, "url"),
    ({"url": "ftp://93.184.216.34/x"}, "url"),
    ({"url": "http:///nohost"}, "url"),
    ({"url": "http://user:pw@93.184.216.34/"}, "url"),
    ({"url": "http://93.184.216.34/a b"}, "url"),
    ({"url": PUBLIC, "types": []}, "types"),
    ({"url": PUBLIC, "types": ["transaction.created"]}, "types"),
    ({"url": PUBLIC, "types": "deposit"}, "types"),
    ({"url": PUBLIC, "extra": 1}, "extra"),
    ({"url": 5}, "url"),
]


@pytest.mark.parametrize(("body", "field"), BAD_BODIES)
async def test_bad_bodies_are_refused_and_change_nothing(api: Api, body: dict[str, Any], field: str) -> None:
    await ok(await api.put("/v1/webhooks/kept", {"url": PUBLIC}))
    response = await api.put("/v1/webhooks/kept", body)
    problem(response, 400, "validation_error")
    assert field in {e["field"] for e in response.json["errors"]}
    assert (await ok(await api.get("/v1/webhooks/kept")))["url"] == PUBLIC
    problem(await api.put("/v1/webhooks/new", body), 400, "validation_error")
    assert [w["name"] for w in (await ok(await api.get("/v1/webhooks")))["items"]] == ["kept"]


@pytest.mark.parametrize("name", ["a.b", "x" * 65, "%C3%A9", "a%20b"])
async def test_names_outside_the_pattern_are_refused(api: Api, name: str) -> None:
    response = await api.put(f"/v1/webhooks/{name}", {"url": "ftp://x"})
    problem(response, 400, "validation_error")
    assert {e["field"] for e in response.json["errors"]} == {"name", "url"}  # every problem at once
    problem(await api.get(f"/v1/webhooks/{name}"), 400, "validation_error")
    problem(await api.delete(f"/v1/webhooks/{name}"), 400, "validation_error")
    await ok(await api.put("/v1/webhooks/" + "x" * 64, {"url": PUBLIC}))


def test_only_admins_manage_webhooks() -> None:
    from billing.api.routes import ENDPOINTS

    for (_method, path), endpoint in ENDPOINTS.items():
        if path.startswith("/v1/webhooks"):
            assert endpoint.roles == {"admin"}


NOT_PUBLIC = [
    "http://127.0.0.1:8080/hook",
    "http://localhost/hook",
    "http://10.1.2.3/hook",
    "http://172.16.0.1/hook",
    "https://192.168.0.10/hook",
    "http://169.254.169.254/latest/meta-data",
    "http://[::1]/hook",
    "http://[fe80::1]/hook",
    "http://[fd00::1]/hook",
    "http://[::ffff:127.0.0.1]/hook",
    "http://0.0.0.0/hook",
]


@pytest.mark.parametrize("url", NOT_PUBLIC)
async def test_urls_of_non_public_addresses_are_refused(api: Api, url: str) -> None:
    problem(await api.put("/v1/webhooks/inside", {"url": url}), 400, "webhook_url_not_allowed")
    assert (await ok(await api.get("/v1/webhooks"))) == {"items": []}


async def test_a_name_resolving_to_a_private_address_is_refused(ctx: Context) -> None:
    from billing.core.errors import ApiError
    from billing.core.schemas import WebhookRequest

    async def lookup(host: str, port: int) -> list[str]:
        return {"hooks.example.com": ["93.184.216.34", "10.0.0.7"], "ok.example.com": ["93.184.216.34"]}[host]

    ctx.webhooks.lookup = lookup
    with pytest.raises(ApiError) as refused:
        await ctx.webhooks.put("dns", WebhookRequest(url="https://hooks.example.com/in"))
    assert refused.value.code == "webhook_url_not_allowed" and "10.0.0.7" in refused.value.detail
    assert (await ctx.webhooks.put("dns", WebhookRequest(url="https://ok.example.com/in")))["secret"]


class TestAllowedPrivate:
    @pytest.fixture
    def settings(self, settings: Settings) -> Settings:
        return settings.model_copy(update={"webhook_allow_private": True})

    @pytest.mark.parametrize("url", NOT_PUBLIC[:3])
    async def test_the_setting_allows_them(self, api: Api, ctx: Context, url: str) -> None:
        assert ctx.webhook_dispatcher is not None
        await ctx.webhook_dispatcher.stop()
        created = await ok(await api.put("/v1/webhooks/inside", {"url": url}))
        assert created["url"] == url
