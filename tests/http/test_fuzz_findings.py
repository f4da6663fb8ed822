"""What schemathesis found against /openapi.json, pinned over real HTTP."""

from __future__ import annotations

import pytest

from tests.support.api import Api


@pytest.mark.parametrize("method", ["GET", "POST", "PUT", "PATCH", "DELETE"])
async def test_unknown_path_is_404_before_content_type_or_auth_checks(api: Api, method: str) -> None:
    # PUT to an unknown path answered 415: the content-type check ran before "no such route".
    answer = await api.request(method, "/v1/nowhere", token=None, headers={"Content-Type": "text/plain"}, body="x")
    assert answer.status == 404
    assert answer.content_type.startswith("application/problem+json")
    assert answer.json["code"] == "not_found"
    assert answer.headers["X-Request-ID"]


async def test_batch_refuses_a_malformed_idempotency_key_header_like_every_post(api: Api) -> None:
    batch = {"operations": [{"op": "deposit", "user_id": 1, "amount": "1.00"}]}
    answer = await api.post("/v1/batch", batch, token="tok-payments", headers={"Idempotency-Key": "has space"})
    assert answer.status == 400 and answer.json["code"] == "validation_error"
    assert (await api.balance(1)).status == 404  # nothing ran


async def test_an_integral_json_number_is_accepted_as_an_id(api: Api) -> None:
    # JSON Schema's "integer" includes 42.0; the API refused it while its spec promised it.
    body = b'{"user_id": 42.0, "amount": "5.00"}'
    answer = await api.request("POST", "/v1/deposits", body=body, token="tok-payments", key="int-id")
    assert answer.status == 201 and answer.json["balance"]["user_id"] == 42
    again = await api.request(
        "POST", "/v1/deposits", json={"user_id": 42, "amount": "5.00"}, token="tok-payments", key="int-id"
    )
    assert again.status == 201 and again.headers.get("Idempotent-Replayed") == "true"  # the same request
    assert (await api.balance(42)).json["available"] == "5.00"
