"""An unknown path answers 404 whatever the method, headers or body (found by schemathesis: PUT gave 415)."""

from __future__ import annotations

import pytest

from tests.support.api import Api


@pytest.mark.parametrize("method", ["GET", "POST", "PUT", "PATCH", "DELETE"])
async def test_unknown_path_is_404_before_content_type_or_auth_checks(api: Api, method: str) -> None:
    answer = await api.request(method, "/v1/nowhere", token=None, headers={"Content-Type": "text/plain"}, body="x")
    assert answer.status == 404
    assert answer.content_type.startswith("application/problem+json")
    assert answer.json["code"] == "not_found"
    assert answer.headers["X-Request-ID"]
