"""The receiver example in docs/api.md, run as written against a real delivery: it accepts what the dispatcher
signs and refuses a changed body, another secret and an old signature."""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

import pytest

from billing.bootstrap import Context
from billing.core.config import Settings
from billing.core.schemas import WebhookRequest
from billing.webhooks.dispatcher import HttpSender, WebhookDispatcher, sign
from tests.support.webhook_receiver import receiving
from tests.support.workload import deposit

API_DOC = Path(__file__).resolve().parents[2] / "docs" / "api.md"
MARKER = "<!-- webhook receiver example"


def doc_example() -> Any:
    """The `verify` function of the fenced block right after the marker."""
    text = API_DOC.read_text(encoding="utf-8")
    found = re.search(re.escape(MARKER) + r".*?-->\n```python\n(.*?)^```", text, re.S | re.M)
    assert found, "docs/api.md lost its receiver example"
    code = found.group(1)
    assert len(code.splitlines()) <= 15, "the example should stay short"
    namespace: dict[str, Any] = {}
    exec(compile(code, str(API_DOC), "exec"), namespace)
    return namespace["verify"]


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return settings.model_copy(update={"webhook_allow_private": True})


async def test_the_documented_receiver_verifies_a_real_delivery(ctx: Context) -> None:
    verify = doc_example()
    assert ctx.webhook_dispatcher is not None
    await ctx.webhook_dispatcher.stop()
    async with receiving() as receiver:
        secret = (await ctx.webhooks.put("doc", WebhookRequest(url=receiver.url)))["secret"]
        await deposit(ctx.ledger, 1, 12_345, "Пополнение")
        await ctx.projector.drain()
        d = WebhookDispatcher(ctx.webhooks.store, ctx.events, HttpSender(True))
        assert await d.store.take_lease("doc", "token", 10_000)
        assert await d.step("doc", "token") == 0
        d.sender.close()
    (delivery,) = receiver.deliveries
    headers = {"Billing-Signature": delivery.signature, "Billing-Webhook-Id": "doc"}
    assert verify(secret, headers, delivery.body) is True
    assert verify(secret, headers, delivery.body.replace(b"123.45", b"923.45")) is False
    assert verify("another secret", headers, delivery.body) is False
    assert verify(secret, {}, delivery.body) is False
    assert verify(secret, {"Billing-Signature": "t=x,v1=00"}, delivery.body) is False
    old = {"Billing-Signature": sign(secret, int(time.time()) - 3600, delivery.body)}
    assert verify(secret, old, delivery.body) is False
    assert verify(secret, old, delivery.body, tolerance=7200) is True
