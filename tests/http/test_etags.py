"""ETags: none on API answers (Cache-Control: no-store); the cacheable OpenAPI document keeps ETag and 304."""

from __future__ import annotations

from tests.support.api import Api


async def test_api_answers_carry_no_etag_and_ignore_if_none_match(api: Api) -> None:
    await api.deposit(31, "2.00")
    r = await api.get("/v1/users/31/balance", token="tok-payments", headers={"If-None-Match": "*"})
    assert r.status == 200 and r.json["available"] == "2.00"  # never a 304 for a no-store answer
    assert r.headers.get("Cache-Control") == "no-store"
    assert "Etag" not in r.headers


async def test_the_openapi_document_keeps_its_etag(api: Api) -> None:
    first = await api.get("/openapi.json", token=None)
    etag = first.headers.get("Etag")
    assert first.status == 200 and etag
    again = await api.get("/openapi.json", token=None, headers={"If-None-Match": etag})
    assert again.status == 304
