"""Bidi and zero-width controls in comments and service names: stored as sent, shown as visible marks in <bdi>."""

from __future__ import annotations

import re
from datetime import datetime
from zoneinfo import ZoneInfo

import pytest

from billing.bootstrap import Context
from tests.support.api import Api
from tests.support.console import ConsoleClient

pytestmark = pytest.mark.parametrize("redis_backend", ["fakeredis"], indirect=True)

USER = 31
# Shown obeyed, U+202E would make the agent read "… 5 RUB refund txt.exe" backwards; U+200B hides in the name.
COMMENT = "refund \u202eexe.txt\u202c ok\u200b<b>&"
SERVICE = "Promo\u2067\u05e9\u05dd\u2069\ufeff"
CONTROLS = re.compile("[\u202a-\u202e\u2066-\u2069\u200e\u200f\u061c\u200b-\u200d\u2060\ufeff]")


async def seed(api: Api, ctx: Context) -> str:
    """A deposit with COMMENT, a charge and an open reservation for service SERVICE; returns the charge's month."""
    assert (await api.post("/v1/deposits", {"user_id": USER, "amount": "50.00", "comment": COMMENT})).status == 201
    body = {"user_id": USER, "service_id": 5, "order_id": 1, "amount": "10.00", "service_name": SERVICE}
    assert (await api.post("/v1/reservations", body, token="tok-orders")).status == 201
    body = {"user_id": USER, "service_id": 5, "order_id": 1, "amount": "10.00"}
    charged = await api.post("/v1/reservations/recognize", body, token="tok-orders")
    assert charged.status == 200, charged.body
    body = {"user_id": USER, "service_id": 5, "order_id": 2, "amount": "3.00"}
    assert (await api.post("/v1/reservations", body, token="tok-orders")).status == 201
    await ctx.projector.drain()
    created = datetime.fromisoformat(charged.json["transaction"]["created_at"].replace("Z", "+00:00"))
    return created.astimezone(ZoneInfo(ctx.settings.report_tz)).strftime("%Y-%m")


def cell(html: str, css_class: str, row_id: int) -> str:
    row = html.split(f'data-id="{row_id}"', 1)[1].split("</tr>", 1)[0]
    return row.split(f'class="{css_class}">', 1)[1].split("</td>", 1)[0]


async def test_the_api_keeps_the_comment_and_the_console_shows_marks(
    console: ConsoleClient, api: Api, ctx: Context
) -> None:
    await seed(api, ctx)
    items = (await api.get(f"/v1/users/{USER}/transactions?type=deposit")).json["items"]
    assert items[0]["comment"] == COMMENT  # stored and answered verbatim
    await console.sign_in("tok-support")
    page = await console.get(f"/console/users?user={USER}")
    assert page.status == 200
    assert not CONTROLS.search(page.text)  # none of them reaches the browser as a control

    comment = cell(page.text, "comment", items[0]["id"])
    assert comment == (
        '<bdi>refund <span class="cc" dir="ltr" title="RIGHT-TO-LEFT OVERRIDE">⟨U+202E⟩</span>exe.txt'
        '<span class="cc" dir="ltr" title="POP DIRECTIONAL FORMATTING">⟨U+202C⟩</span> ok'
        '<span class="cc" dir="ltr" title="ZERO WIDTH SPACE">⟨U+200B⟩</span>&lt;b&gt;&amp;</bdi>'
    )
    shown_name = (
        'Promo<span class="cc" dir="ltr" title="RIGHT-TO-LEFT ISOLATE">⟨U+2067⟩</span>\u05e9\u05dd'
        '<span class="cc" dir="ltr" title="POP DIRECTIONAL ISOLATE">⟨U+2069⟩</span>'
        '<span class="cc" dir="ltr" title="ZERO WIDTH NO-BREAK SPACE">⟨U+FEFF⟩</span>'
    )
    charges = (await api.get(f"/v1/users/{USER}/transactions?type=charge")).json["items"]
    description = cell(page.text, "description", charges[0]["id"])
    assert description.startswith("<bdi>Списание 10.00 ₽ за услугу «<bdi>" + shown_name + "</bdi>»"), description
    reservations = page.text.split('id="reservations"', 1)[1].split("</table>", 1)[0]
    assert "5 · <bdi>" + shown_name + "</bdi>" in reservations


async def test_the_reports_page_shows_service_names_with_marks(console: ConsoleClient, api: Api, ctx: Context) -> None:
    month = await seed(api, ctx)
    await console.sign_in("tok-accounting")
    page = await console.get(f"/console/reports?month={month}")
    assert page.status == 200 and "10.00 ₽" in page.text
    assert not CONTROLS.search(page.text)
    assert "<bdi>Promo" in page.text and "⟨U+2067⟩" in page.text and "⟨U+FEFF⟩" in page.text
