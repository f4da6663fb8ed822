"""An HTTP client for tests: JSON in, status + headers + parsed body out, tokens by role name."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson
from tornado.httpclient import AsyncHTTPClient, HTTPRequest

# token -> roles; tests name tokens by these keys
TEST_TOKENS: dict[str, list[str]] = {
    "tok-payments": ["payments"],
    "tok-payments-2": ["payments"],
    "tok-orders": ["orders"],
    "tok-support": ["support"],
    "tok-accounting": ["accounting"],
    "tok-events": ["events"],
    "tok-admin": ["admin"],
}


@dataclass
class Response:
    status: int
    headers: Any
    body: bytes

    @property
    def json(self) -> Any:
        return orjson.loads(self.body) if self.body else None

    @property
    def content_type(self) -> str:
        return self.headers.get("Content-Type", "")


def problem(response: Response, status: int, code: str) -> None:
    """Assert an RFC 9457 problem+json answer with this status and code."""
    assert response.status == status, response.body
    assert response.content_type.startswith("application/problem+json")
    body = response.json
    assert body["code"] == code and body["status"] == status
    assert {"type", "title", "detail"} <= body.keys()


class Api:
    def __init__(self, base_url: str) -> None:
        self.base_url = base_url
        self.client = AsyncHTTPClient(force_instance=True, max_clients=128)

    async def request(
        self,
        method: str,
        path: str,
        json: Any = None,
        *,
        token: str | None = "tok-admin",
        body: bytes | str | None = None,
        headers: dict[str, str] | None = None,
        key: str | None = None,
    ) -> Response:
        all_headers = {}
        if token is not None:
            all_headers["Authorization"] = f"Bearer {token}"
        if json is not None:
            body = orjson.dumps(json)
        if body is not None:
            all_headers["Content-Type"] = "application/json"
        if key is not None:
            all_headers["Idempotency-Key"] = key
        all_headers.update(headers or {})
        if isinstance(body, str):
            body = body.encode()
        if body is None and method in ("POST", "PUT", "PATCH"):
            body = b""
        request = HTTPRequest(
            self.base_url + path,
            method=method,
            headers=all_headers,
            body=body,
            allow_nonstandard_methods=True,
            request_timeout=60,
        )
        answer = await self.client.fetch(request, raise_error=False)
        return Response(answer.code, answer.headers, answer.body or b"")

    async def get(self, path: str, **kwargs: Any) -> Response:
        return await self.request("GET", path, **kwargs)

    async def post(self, path: str, json: Any = None, **kwargs: Any) -> Response:
        return await self.request("POST", path, json, **kwargs)

    async def put(self, path: str, json: Any = None, **kwargs: Any) -> Response:
        return await self.request("PUT", path, json, **kwargs)

    async def delete(self, path: str, **kwargs: Any) -> Response:
        return await self.request("DELETE", path, **kwargs)

    async def deposit(self, user_id: int, amount: str, **kwargs: Any) -> Response:
        return await self.post("/v1/deposits", {"user_id": user_id, "amount": amount}, token="tok-payments", **kwargs)

    async def balance(self, user_id: int) -> Response:
        return await self.get(f"/v1/users/{user_id}/balance", token="tok-payments")

    def close(self) -> None:
        self.client.close()
