"""OpenAPI 3.1 for every route, generated from the pydantic models in billing/core/schemas.py and one route table."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, TypeAdapter
from pydantic.json_schema import models_json_schema

from billing.core import schemas
from billing.core.errors import PROBLEM_CONTENT_TYPE, PROBLEMS
from billing.core.parsing import MAX_CURSOR_LENGTH
from billing.core.roles import ROLES
from billing.ledger.service import OPERATIONS
from billing.views.report_month import MONTH_PATTERN

REF = "#/components/schemas/{model}"
ANY_ROLE = ROLES
NO_AUTH: frozenset[str] = frozenset()
# Route templates that serve HTML or static files to people: not part of the API spec.
HTML_PREFIXES = ("/console", "/docs")

# Errors every route of a kind can answer, besides its own business codes.
AUTH_ERRORS = ("unauthenticated", "forbidden")
BODY_ERRORS = ("invalid_json", "validation_error", "payload_too_large", "unsupported_media_type")
IDEMPOTENCY_ERRORS = ("idempotency_key_in_use", "idempotency_key_reused")
ALWAYS = ("method_not_allowed", "internal_error")
STORE_ERRORS = ("unavailable",)


@dataclass(frozen=True)
class Param:
    """A path or query parameter; its schema comes from a type (through pydantic) or is given."""

    name: str
    where: str  # "path" | "query"
    description: str
    schema: Any = None  # a type for TypeAdapter, or a JSON Schema dict
    required: bool = False


@dataclass(frozen=True)
class Op:
    """One operation of the API: everything its OpenAPI entry says."""

    summary: str
    roles: frozenset[str]
    responses: Mapping[int, Any]  # status -> pydantic model, or a media type string ("text/csv"), or None
    request: type[BaseModel] | None = None
    params: tuple[Param, ...] = ()
    errors: tuple[str, ...] = ()  # business problem codes besides the generic ones
    tag: str = "money"
    description: str = ""
    store: bool = True  # touches Redis/MongoDB, so may answer 503 unavailable
    extra: Mapping[str, Any] = field(default_factory=dict)


ID_SCHEMA = TypeAdapter(schemas.Id).json_schema()
USER_ID = Param("user_id", "path", "The user", schemas.Id, True)
SERVICE_ID = Param("service_id", "path", "The service", schemas.Id, True)
MONTH = {"type": "string", "pattern": MONTH_PATTERN, "examples": ["2026-11"]}
# The published forms of parsing.epoch_seconds, hex_sha256 and cursor_parts (tests/unit/test_parsing.py).
EXPIRES = {"type": "string", "pattern": "^[0-9]{1,12}$"}
SIGNATURE = {"type": "string", "pattern": "^[0-9a-f]{64}$"}
CURSOR = {"type": "string", "pattern": "^[A-Za-z0-9_-]+\\.[A-Za-z0-9_-]+$", "maxLength": MAX_CURSOR_LENGTH}
BOM_FLAG = {"type": "string", "enum": ["1", "0", "true", "false"]}

# Response model of each money operation (the request model and roles come from billing.ledger.service).
_OPERATION_RESULTS: dict[str, tuple[int, type[BaseModel], tuple[str, ...], str]] = {
    "deposit": (201, schemas.MoneyMovement, ("balance_limit_exceeded",), "Credit a user's available balance"),
    "withdrawal": (
        201,
        schemas.MoneyMovement,
        ("account_not_found", "insufficient_funds"),
        "Debit a user's available balance",
    ),
    "transfer": (
        201,
        schemas.TransferResult,
        ("account_not_found", "insufficient_funds", "balance_limit_exceeded"),
        "Move money between two users, atomically",
    ),
    "reserve": (
        201,
        schemas.ReservationResult,
        ("account_not_found", "insufficient_funds", "reservation_conflict"),
        "Reserve money for an order of a service (phase one); the same reservation again answers 200",
    ),
    "recognize": (
        200,
        schemas.ReservationResult,
        ("reservation_not_found", "amount_exceeds_reservation", "reservation_closed"),
        "Recognize revenue from a reservation (full or partial capture)",
    ),
    "cancel": (
        200,
        schemas.ReservationResult,
        ("reservation_not_found", "reservation_closed"),
        "Cancel a reservation: the reserved amount returns to available",
    ),
}


def _operation_entries() -> dict[tuple[str, str], Op]:
    out: dict[tuple[str, str], Op] = {}
    for name, spec in OPERATIONS.items():
        status, model, errors, summary = _OPERATION_RESULTS[name]
        responses: dict[int, Any] = {status: model}
        if name == "reserve":
            responses[200] = model
        tag = "reservations" if name in ("reserve", "recognize", "cancel") else "money"
        out[("POST", spec.path)] = Op(summary, spec.roles, responses, spec.model, errors=errors, tag=tag)
    return out


# (method, route template) -> operation. Adding a route to billing/app.py means adding its entry here;
# tests/unit/test_openapi.py fails for any route of make_app without one.
ROUTES: dict[tuple[str, str], Op] = {
    **_operation_entries(),
    ("GET", "/v1/users/{user_id}/balance"): Op(
        "A user's balance",
        frozenset({"payments", "orders", "support", "accounting"}),
        {200: schemas.Balance},
        params=(USER_ID,),
        errors=("account_not_found",),
        tag="money",
    ),
    ("GET", "/v1/reservations"): Op(
        "Look one reservation up",
        frozenset({"orders", "support"}),
        {200: schemas.Reservation},
        params=(
            Param("user_id", "query", "The user", schemas.Id, True),
            Param("service_id", "query", "The service", schemas.Id, True),
            Param("order_id", "query", "The order", schemas.Id, True),
        ),
        errors=("reservation_not_found",),
        tag="reservations",
    ),
    ("GET", "/v1/services"): Op("The services catalog", ANY_ROLE, {200: schemas.ServiceList}, tag="services"),
    ("PUT", "/v1/services/{service_id}"): Op(
        "Name a service in the catalog",
        frozenset({"orders"}),
        {200: schemas.Service},
        schemas.ServiceNameRequest,
        params=(SERVICE_ID,),
        tag="services",
    ),
    ("GET", "/v1/users/{user_id}/transactions"): Op(
        "A user's transaction history (keyset pagination)",
        frozenset({"support"}),
        {200: schemas.HistoryPage},
        params=(
            USER_ID,
            Param("sort", "query", "Sort key; ties by id", {"type": "string", "enum": ["created_at", "amount"]}),
            Param("order", "query", "Sort order", {"type": "string", "enum": ["desc", "asc"]}),
            Param("limit", "query", "Page size", {"type": "integer", "minimum": 1, "maximum": 100, "default": 20}),
            Param("cursor", "query", "next_cursor of the previous page (opaque)", CURSOR),
            Param(
                "type",
                "query",
                "Comma-separated transaction types: " + ", ".join(schemas.TRANSACTION_TYPES),
                {
                    "type": "string",
                    "pattern": "^({0})(,({0}))*$".format("|".join(schemas.TRANSACTION_TYPES)),
                    "examples": ["deposit,charge"],
                },
            ),
            Param("from", "query", "Inclusive lower bound, RFC 3339", {"type": "string", "format": "date-time"}),
            Param("to", "query", "Exclusive upper bound, RFC 3339", {"type": "string", "format": "date-time"}),
        ),
        errors=("invalid_cursor", "account_not_found"),
        tag="history",
        description="Send `Accept-Language: en` for English descriptions (Russian by default).",
    ),
    ("GET", "/v1/reports/revenue"): Op(
        "A signed link to the monthly revenue report (CSV)",
        frozenset({"accounting"}),
        {200: schemas.ReportLink},
        params=(
            Param("month", "query", "The month, YYYY-MM, in BILLING_REPORT_TZ", MONTH, True),
            Param("bom", "query", "Put bom=1|0 into the link (UTF-8 BOM for Excel)", BOM_FLAG),
        ),
        tag="reports",
    ),
    ("GET", "/v1/reports/revenue/{month}.csv"): Op(
        "Download the revenue report through its signed link (no token)",
        NO_AUTH,
        {200: "text/csv"},
        params=(
            Param("month", "path", "The month, YYYY-MM", MONTH, True),
            Param("expires", "query", "Expiry of the link, epoch seconds (signed)", EXPIRES, True),
            Param("signature", "query", "HMAC-SHA256 of month and expiry (hex)", SIGNATURE, True),
            Param("bom", "query", "1: start with a UTF-8 BOM (Excel); not signed", BOM_FLAG),
        ),
        errors=("invalid_signature",),
        tag="reports",
        description="Use the `url` from GET /v1/reports/revenue as it is; its query is signed. "
        "`;`-separated UTF-8 with CRLF line ends: header `service;total`, then `<name>;<total>` by name.",
    ),
    ("POST", "/v1/batch"): Op(
        "Many money operations in one request, each atomic, idempotent and authorized alone",
        ANY_ROLE,
        {200: schemas.BatchResponse},
        schemas.BatchRequest,
        tag="money",
        description="Each operation: `op` (deposit, withdrawal, transfer, reserve, recognize, cancel), an optional "
        "`idempotency_key`, and the fields of that operation's endpoint. Results are in order.",
    ),
    ("GET", "/healthz"): Op("Liveness", NO_AUTH, {200: schemas.Health}, tag="operations", store=False),
    ("GET", "/readyz"): Op("Readiness: Redis and MongoDB answer", NO_AUTH, {200: schemas.Health}, tag="operations"),
    ("GET", "/metrics"): Op(
        "Prometheus metrics (text exposition format)",
        NO_AUTH,
        {200: "text/plain; version=0.0.4"},
        tag="operations",
        store=False,
    ),
    ("GET", "/openapi.json"): Op(
        "This OpenAPI document", NO_AUTH, {200: "application/json"}, tag="operations", store=False
    ),
}


# ---- building the document ----------------------------------------------------------------------------


def _component_models() -> list[tuple[type[BaseModel], str]]:
    models: list[tuple[type[BaseModel], str]] = [(schemas.Problem, "serialization")]
    for op in ROUTES.values():
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


def _error_codes(method: str, op: Op) -> list[str]:
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


def _operation(method: str, path: str, op: Op, refs: Mapping[tuple[type[BaseModel], str], Any]) -> dict[str, Any]:
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


def _success(method: str, status: int, target: Any, refs: Mapping[tuple[type[BaseModel], str], Any]) -> dict[str, Any]:
    headers: dict[str, Any] = {"X-Request-ID": {"$ref": "#/components/headers/RequestId"}}
    if method == "POST":
        headers["Idempotent-Replayed"] = {"$ref": "#/components/headers/IdempotentReplayed"}
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
    for (method, path), op in ROUTES.items():
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


# ---- which routes an application serves (the tests hold make_app to ROUTES with these) -------------------

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
    """Routes of the app (besides HTML pages) with no entry in ROUTES: must be empty."""
    documented = {(method, normalize(path)) for method, path in ROUTES}
    return [
        f"{method} {template} ({handler.__name__})"
        for method, template, handler in app_routes(app)
        if not is_html_route(template) and (method, template) not in documented
    ]
