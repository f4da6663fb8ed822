"""OpenAPI 3.1 for every route, generated from the route table (billing/api/routes.py) and the pydantic models."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

from pydantic import BaseModel, TypeAdapter
from pydantic.json_schema import JsonSchemaMode, models_json_schema

from billing.api.endpoint import Endpoint, Param
from billing.api.routes import ENDPOINTS
from billing.core import schemas
from billing.core.errors import PROBLEM_CONTENT_TYPE, PROBLEMS
from billing.core.roles import ANY_ROLE

REF = "#/components/schemas/{model}"
# Route templates that serve HTML or static files to people: not part of the API spec.
HTML_PREFIXES = ("/console", "/docs")

# Errors every route of a kind can answer, besides its own business codes.
AUTH_ERRORS = ("unauthenticated", "forbidden")
BODY_ERRORS = ("invalid_json", "validation_error", "payload_too_large", "unsupported_media_type")
IDEMPOTENCY_ERRORS = ("idempotency_key_in_use", "idempotency_key_reused")
ALWAYS = ("method_not_allowed", "internal_error")
STORE_ERRORS = ("unavailable",)


# ---- building the document ----------------------------------------------------------------------------


def _component_models() -> list[tuple[type[BaseModel], JsonSchemaMode]]:
    models: list[tuple[type[BaseModel], JsonSchemaMode]] = [(schemas.Problem, "serialization")]
    for op in ENDPOINTS.values():
        if op.request is not None:
            models.append((op.request, "validation"))
        for target in op.responses.values():
            if isinstance(target, type) and issubclass(target, BaseModel):
                models.append((target, "serialization"))
    return list(dict.fromkeys(models))


def _param_schema(param: Param) -> dict[str, Any]:
    if isinstance(param.schema, dict):
        return param.schema
    return TypeAdapter(param.schema or str).json_schema(ref_template=REF)


def _problem_response(codes: Iterable[str]) -> dict[str, Any]:
    codes = list(codes)
    return {
        "description": "Problem details; `code` is one of: " + ", ".join(f"`{c}`" for c in codes),
        "content": {PROBLEM_CONTENT_TYPE: {"schema": {"$ref": REF.format(model="Problem")}}},
    }


def _error_codes(method: str, op: Endpoint) -> list[str]:
    codes: list[str] = []
    if op.roles:
        codes += AUTH_ERRORS
    if op.request is not None:
        codes += BODY_ERRORS
    if op.params:
        codes.append("validation_error")
    if method == "POST":
        codes += ("validation_error",) + IDEMPOTENCY_ERRORS
    codes += op.errors
    if op.store:
        codes += STORE_ERRORS
    codes += ALWAYS
    return list(dict.fromkeys(codes))


def _operation(method: str, path: str, op: Endpoint, refs: Mapping[tuple[Any, JsonSchemaMode], Any]) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "operationId": _operation_id(method, path),
        "summary": op.summary,
        "tags": [op.tag],
    }
    description = op.description
    if op.roles:
        roles = "any role" if op.roles == ANY_ROLE else ", ".join(sorted(op.roles))
        description = (f"Roles: {roles} (admin may do everything). " + description).strip()
        entry["security"] = [{"bearerAuth": []}]
    else:
        entry["security"] = []
    if description:
        entry["description"] = description
    parameters = [
        {
            "name": p.name,
            "in": p.where,
            "description": p.description,
            "required": p.required or p.where == "path",
            "schema": _param_schema(p),
            **({} if p.explode else {"style": "form", "explode": False}),
        }
        for p in op.params
    ]
    if method == "POST":
        parameters.append({"$ref": "#/components/parameters/IdempotencyKey"})
    parameters.append({"$ref": "#/components/parameters/RequestId"})
    entry["parameters"] = parameters
    if op.request is not None:
        entry["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": refs[(op.request, "validation")]}},
        }
    responses: dict[str, Any] = {}
    for status, target in sorted(op.responses.items()):
        responses[str(status)] = _success(method, status, target, refs)
        for media_type in op.also if target is not None else ():  # the same answer in another form, by Accept
            responses[str(status)]["content"][media_type] = {"schema": {"type": "string"}}
    by_status: dict[int, list[str]] = {}
    for code in _error_codes(method, op):
        by_status.setdefault(PROBLEMS[code][0], []).append(code)
    for status, codes in sorted(by_status.items()):
        responses[str(status)] = _problem_response(codes)
        if status == 503:
            responses[str(status)]["headers"] = {"Retry-After": {"$ref": "#/components/headers/RetryAfter"}}
    entry["responses"] = responses
    entry.update(op.extra)
    return entry


def _success(
    method: str, status: int, target: Any, refs: Mapping[tuple[type[BaseModel], JsonSchemaMode], Any]
) -> dict[str, Any]:
    headers: dict[str, Any] = {"X-Request-ID": {"$ref": "#/components/headers/RequestId"}}
    if method == "POST":
        headers["Idempotent-Replayed"] = {"$ref": "#/components/headers/IdempotentReplayed"}
    if target is None:  # 204: no body
        return {"description": "No Content", "headers": headers}
    if isinstance(target, str):
        schema: dict[str, Any] = {"type": "object"} if target == "application/json" else {"type": "string"}
        content = {target: {"schema": schema}}
    else:
        content = {"application/json": {"schema": refs[(target, "serialization")]}}
    description = "OK" if status == 200 else "Created"
    return {"description": description, "headers": headers, "content": content}


def _operation_id(method: str, path: str) -> str:
    words = re.sub(r"[{}]", "", path).replace(".", "_").strip("/").replace("/", "_").replace("-", "_")
    return f"{method.lower()}_{words or 'root'}"


def build_spec(server_url: str | None = None) -> dict[str, Any]:
    """The whole OpenAPI 3.1 document."""
    refs, definitions = models_json_schema(_component_models(), ref_template=REF)
    components = definitions.get("$defs", {})
    problem = components["Problem"]
    problem["properties"]["code"]["enum"] = list(PROBLEMS)
    problem["properties"]["status"]["enum"] = sorted({status for status, _ in PROBLEMS.values()})
    paths: dict[str, dict[str, Any]] = {}
    for (method, path), op in ENDPOINTS.items():
        paths.setdefault(path, {})[method.lower()] = _operation(method, path, op, refs)
    spec: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {
            "title": "billing",
            "version": "1.0.0",
            "description": "Users' money: deposits, withdrawals, transfers, reservations, history, revenue reports. "
            "Amounts in responses are strings with two decimals (rubles); errors are RFC 9457 problem details.",
        },
        "paths": paths,
        "components": {
            "schemas": components,
            "securitySchemes": {"bearerAuth": {"type": "http", "scheme": "bearer", "description": "BILLING_TOKENS"}},
            "parameters": {
                "IdempotencyKey": {
                    "name": "Idempotency-Key",
                    "in": "header",
                    "required": False,
                    "description": "Same key, same token, same request: the first outcome is replayed. Kept >= 24 h.",
                    "schema": {"type": "string", "minLength": 1, "maxLength": 255, "pattern": "^[!-~]+$"},
                },
                "RequestId": {
                    "name": "X-Request-ID",
                    "in": "header",
                    "required": False,
                    "description": "Echoed back and logged when 1-200 visible ASCII characters;"
                    " otherwise (or absent) replaced by a generated id, never refused.",
                    "schema": {"type": "string"},
                },
            },
            "headers": {
                "IdempotentReplayed": {
                    "description": "`true` when this answer replays the outcome of an earlier request with the same key",
                    "schema": {"type": "string", "enum": ["true"]},
                },
                "RequestId": {
                    "description": "The request id (from X-Request-ID or generated)",
                    "schema": {"type": "string"},
                },
                "RetryAfter": {"description": "Seconds to wait before retrying", "schema": {"type": "string"}},
            },
        },
        "security": [{"bearerAuth": []}],
    }
    if server_url:
        spec["servers"] = [{"url": server_url}]
    return spec


# ---- which routes an application serves (the tests hold make_app to the route table with these) -------------------

HTTP_METHODS = ("get", "post", "put", "delete", "patch")


def normalize(template: str) -> str:
    """'/v1/users/{user_id}/balance' -> '/v1/users/{}/balance', to compare with a regex route."""
    return re.sub(r"\{[^}]*\}", "{}", template)


def app_routes(app: Any) -> list[tuple[str, str, type]]:
    """(METHOD, normalized template, handler class) for every method every route of a Tornado app serves."""
    import tornado.web

    out: list[tuple[str, str, type]] = []
    for rule in _rules(app.default_router):
        matcher, handler = rule.matcher, rule.target
        if not (isinstance(handler, type) and issubclass(handler, tornado.web.RequestHandler)):
            continue
        regex = getattr(matcher, "regex", None)
        groups = regex.groups if regex is not None else 0
        template = None
        try:
            template = matcher.reverse(*["PARAM"] * groups)
        except Exception:  # a route pattern reverse() cannot rebuild: reported by its raw regex
            template = None
        if template is None:
            template = regex.pattern if regex is not None else repr(matcher)
        template = template.replace("PARAM", "{}")
        for method in HTTP_METHODS:
            if getattr(handler, method) is not getattr(tornado.web.RequestHandler, method):
                out.append((method.upper(), template, handler))
    return out


def _rules(router: Any) -> list[Any]:
    """Every (path) rule of a router, descending into nested routers (hosts added by add_handlers)."""
    out: list[Any] = []
    for rule in getattr(router, "rules", []):
        if hasattr(rule.target, "rules"):
            out += _rules(rule.target)
        else:
            out.append(rule)
    return out


def is_html_route(template: str) -> bool:
    return any(template == p or template.startswith(p + "/") for p in HTML_PREFIXES)


def undocumented_routes(app: Any) -> list[str]:
    """Routes of the app (besides HTML pages) with no entry in the route table: must be empty."""
    documented = {(method, normalize(path)) for method, path in ENDPOINTS}
    return [
        f"{method} {template} ({handler.__name__})"
        for method, template, handler in app_routes(app)
        if not is_html_route(template) and (method, template) not in documented
    ]
