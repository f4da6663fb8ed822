"""The OpenAPI document: valid 3.1, complete for every route of make_app, generated from the models."""

from __future__ import annotations

from typing import Any

import pytest
import tornado.web
from openapi_spec_validator import validate

from billing.api.handlers.base import BaseHandler
from billing.api.openapi import app_routes, build_spec, is_html_route, normalize, undocumented_routes
from billing.api.routes import ENDPOINTS, ROUTES
from billing.app import make_app
from billing.core.errors import PROBLEM_CONTENT_TYPE, PROBLEMS


def app() -> tornado.web.Application:
    return make_app(ctx=None)  # type: ignore[arg-type]  # routes only keep ctx; nothing is called


def test_spec_is_valid_openapi_3_1() -> None:
    spec = build_spec("https://billing.example")
    assert spec["openapi"].startswith("3.1")
    validate(spec)  # raises on any schema violation of the OpenAPI 3.1 meta-schema


def test_every_route_of_make_app_has_a_spec_entry() -> None:
    assert undocumented_routes(app()) == []


def test_the_completeness_check_catches_a_route_without_entry() -> None:
    class Extra(BaseHandler):
        def get(self) -> None:
            pass

    application = app()
    application.add_handlers(r".*", [(r"/v1/undocumented/([^/]+)", Extra, {"ctx": None})])
    assert undocumented_routes(application) == ["GET /v1/undocumented/{} (Extra)"]


def test_every_spec_entry_is_a_route_of_make_app() -> None:
    served = {(method, template) for method, template, _ in app_routes(app())}
    missing = {(m, p) for (m, p) in ENDPOINTS if (m, normalize(p)) not in served}
    assert missing == set(), f"spec entries with no route: {sorted(missing)}"


def test_html_pages_are_not_in_the_spec_but_are_routes() -> None:
    templates = {template for _, template, _ in app_routes(app())}
    assert any(is_html_route(t) for t in templates)  # /docs
    assert not any(is_html_route(path) for _, path in ENDPOINTS)


def test_request_bodies_come_from_the_pydantic_models() -> None:
    spec = build_spec()
    for route in ROUTES:
        if route.operation is None:
            continue
        body = spec["paths"][route.template]["post"]["requestBody"]["content"]["application/json"]["schema"]
        component = body["$ref"].rsplit("/", 1)[1]
        assert spec["components"]["schemas"][component] == route.operation.model.model_json_schema(
            ref_template="#/components/schemas/{model}"
        ), route.template


def test_problem_schema_lists_every_code_and_errors_use_problem_json() -> None:
    spec = build_spec()
    problem = spec["components"]["schemas"]["Problem"]
    assert problem["properties"]["code"]["enum"] == list(PROBLEMS)
    deposit = spec["paths"]["/v1/deposits"]["post"]
    for status in ("400", "401", "403", "409", "413", "415", "422", "503"):
        assert PROBLEM_CONTENT_TYPE in deposit["responses"][status]["content"], status
    assert "insufficient_funds" in spec["paths"]["/v1/withdrawals"]["post"]["responses"]["409"]["description"]


def test_posts_take_idempotency_key_and_answer_idempotent_replayed() -> None:
    spec = build_spec()
    for path, item in spec["paths"].items():
        for method, op in item.items():
            refs = [p.get("$ref") for p in op["parameters"]]
            has_key = "#/components/parameters/IdempotencyKey" in refs
            assert has_key == (method == "post"), (method, path)
            if method == "post":
                ok = op["responses"]["201" if "201" in op["responses"] else "200"]
                assert "Idempotent-Replayed" in ok["headers"]


def test_security_bearer_except_open_routes() -> None:
    spec = build_spec()
    assert spec["components"]["securitySchemes"]["bearerAuth"] == {
        "type": "http",
        "scheme": "bearer",
        "description": "BILLING_TOKENS",
    }
    open_routes = {path for path, item in spec["paths"].items() for op in item.values() if op["security"] == []}
    assert open_routes == {"/healthz", "/readyz", "/metrics", "/openapi.json", "/v1/reports/revenue/{month}.csv"}


@pytest.mark.parametrize(
    ("path", "method", "names"),
    [
        (
            "/v1/users/{user_id}/transactions",
            "get",
            ["user_id", "sort", "order", "limit", "cursor", "type", "from", "to"],
        ),
        ("/v1/reports/revenue", "get", ["month", "bom"]),
        ("/v1/reservations", "get", ["user_id", "service_id", "order_id"]),
    ],
)
def test_query_and_path_parameters(path: str, method: str, names: list[str]) -> None:
    op: dict[str, Any] = build_spec()["paths"][path][method]
    assert [p["name"] for p in op["parameters"] if "name" in p] == names
