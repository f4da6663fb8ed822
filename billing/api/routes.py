"""The route table: every path of the HTTP API, its handler, and per method who may call it and what it takes
and answers. The router (billing/app.py), the handlers' token check (BaseHandler.required_roles) and the
OpenAPI document (billing/api/openapi.py) all read it; tests/unit/test_routes.py holds the three together.

Handlers get their route through initialize() (they cannot import this module, which names them).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, TypeAdapter

from billing.api.endpoint import NO_AUTH, Endpoint, Param, Route
from billing.api.handlers.accounts import MAX_BALANCE_IDS, BalanceHandler, BalancesHandler
from billing.api.handlers.batch import BatchHandler
from billing.api.handlers.events import EventsHandler
from billing.api.handlers.health import HealthHandler, ReadyHandler
from billing.api.handlers.history import TransactionsHandler
from billing.api.handlers.operations import OperationHandler
from billing.api.handlers.ops import (
    DOCS_PREFIX,
    SPEC_URL,
    DocsAssetHandler,
    DocsHandler,
    MetricsHandler,
    OpenAPIHandler,
)
from billing.api.handlers.reports import RevenueCsvHandler, RevenueReportHandler
from billing.api.handlers.reservations import ReservationsHandler
from billing.api.handlers.services import ServiceHandler, ServicesHandler
from billing.api.handlers.statements import StatementHandler
from billing.api.handlers.webhooks import WebhookHandler, WebhooksHandler
from billing.core import schemas
from billing.core.parsing import MAX_CURSOR_LENGTH
from billing.core.roles import ANY_ROLE, Role, roles
from billing.core.transactions import TRANSACTION_TYPES
from billing.ledger.service import OPERATIONS
from billing.views import accounting, events, history
from billing.views.report_month import MONTH_PATTERN
from billing.webhooks import dispatcher

PAYMENTS = roles(Role.PAYMENTS)
ORDERS = roles(Role.ORDERS)
ADMIN = roles(Role.ADMIN)


USER_ID = Param("user_id", "path", "The user", schemas.Id, True)
SERVICE_ID = Param("service_id", "path", "The service", schemas.Id, True)
MONTH = {"type": "string", "pattern": MONTH_PATTERN, "examples": ["2026-11"]}
WEBHOOK_NAME = Param(
    "name", "path", "The webhook's name", {"type": "string", "pattern": schemas.WEBHOOK_NAME_PATTERN}, True
)
# The published forms of parsing.epoch_seconds, hex_sha256 and cursor_parts (tests/unit/test_parsing.py).
EXPIRES = {"type": "string", "pattern": "^[0-9]{1,12}$"}
SIGNATURE = {"type": "string", "pattern": "^[0-9a-f]{64}$"}
CURSOR = {"type": "string", "pattern": "^[A-Za-z0-9_-]+\\.[A-Za-z0-9_-]+$", "maxLength": MAX_CURSOR_LENGTH}
BOM_FLAG = {"type": "string", "enum": ["1", "0", "true", "false"]}


def _money(
    name: str,
    template: str,
    who: frozenset[str],
    responses: Mapping[int, type[BaseModel]],
    errors: tuple[str, ...],
    summary: str,
    tag: str = "money",
) -> Route:
    """A route that runs one money operation (billing/ledger/service.py) on POST."""
    operation = OPERATIONS[name]
    post = Endpoint(summary, who, responses, operation.model, errors=errors, tag=tag)
    return Route(template, OperationHandler, {"POST": post}, operation=operation)


_RESERVE = _money(
    "reserve",
    "/v1/reservations",
    ORDERS,
    {201: schemas.ReservationResult, 200: schemas.ReservationResult},
    ("account_not_found", "insufficient_funds", "reservation_conflict"),
    "Reserve money for an order of a service (phase one); the same reservation again answers 200",
    tag="reservations",
)

MONEY_ROUTES: tuple[Route, ...] = (
    _money(
        "deposit",
        "/v1/deposits",
        PAYMENTS,
        {201: schemas.MoneyMovement},
        ("balance_limit_exceeded",),
        "Credit a user's available balance",
    ),
    _money(
        "withdrawal",
        "/v1/withdrawals",
        PAYMENTS,
        {201: schemas.MoneyMovement},
        ("account_not_found", "insufficient_funds"),
        "Debit a user's available balance",
    ),
    _money(
        "transfer",
        "/v1/transfers",
        PAYMENTS,
        {201: schemas.TransferResult},
        ("account_not_found", "insufficient_funds", "balance_limit_exceeded"),
        "Move money between two users: both balances change, or neither",
    ),
    Route(
        _RESERVE.template,
        ReservationsHandler,
        {
            **_RESERVE.methods,
            "GET": Endpoint(
                "Look one reservation up",
                roles(Role.ORDERS, Role.SUPPORT),
                {200: schemas.Reservation},
                params=(
                    Param("user_id", "query", "The user", schemas.Id, True),
                    Param("service_id", "query", "The service", schemas.Id, True),
                    Param("order_id", "query", "The order", schemas.Id, True),
                ),
                errors=("reservation_not_found",),
                tag="reservations",
            ),
        },
        operation=_RESERVE.operation,
    ),
    _money(
        "recognize",
        "/v1/reservations/recognize",
        ORDERS,
        {200: schemas.ReservationResult},
        ("reservation_not_found", "amount_exceeds_reservation", "reservation_closed"),
        "Recognize revenue from a reservation (full or partial capture)",
        tag="reservations",
    ),
    _money(
        "cancel",
        "/v1/reservations/cancel",
        ORDERS,
        {200: schemas.ReservationResult},
        ("reservation_not_found", "reservation_closed"),
        "Cancel a reservation: the reserved amount returns to available",
        tag="reservations",
    ),
    _money(
        "refund",
        "/v1/refunds",
        ORDERS,
        {201: schemas.RefundResult},
        ("reservation_not_found", "reservation_not_recognized", "refund_exceeds_charge", "balance_limit_exceeded"),
        "Refund part or all of a recognized reservation's charge to the user's available balance",
        tag="reservations",
    ),
)

# operation name -> its route; a batch operation may be run by whoever may call that route
OPERATION_ROUTES: dict[str, Route] = {
    route.operation.name: route for route in MONEY_ROUTES if route.operation is not None
}
OPERATION_ROLES: dict[str, frozenset[str]] = {name: route.roles("POST") for name, route in OPERATION_ROUTES.items()}

BALANCE_READERS = roles(Role.PAYMENTS, Role.ORDERS, Role.SUPPORT, Role.ACCOUNTING)

ROUTES: tuple[Route, ...] = (
    *MONEY_ROUTES,
    Route(
        "/v1/users/{user_id}/balance",
        BalanceHandler,
        {
            "GET": Endpoint(
                "A user's balance; with `at`, the balance at that moment from the MongoDB ledger",
                BALANCE_READERS,
                {200: schemas.BalanceMaybeAt},
                params=(
                    USER_ID,
                    Param(
                        "at",
                        "query",
                        "RFC 3339 moment: the balance after every transaction with created_at <= at",
                        {"type": "string", "format": "date-time"},
                    ),
                ),
                errors=("account_not_found",),
                description="Without `at`: the current balance (Redis). With `at`: the balance after the user's "
                "last transaction at or before it (0.00 and 0.00 before the first), read from the MongoDB "
                "ledger within the history's freshness, and `as_of`: `at` in UTC to the millisecond.",
            )
        },
    ),
    Route(
        "/v1/balances",
        BalancesHandler,
        {
            "GET": Endpoint(
                "Many users' balances in one request",
                BALANCE_READERS,
                {200: schemas.BalanceList},
                params=(
                    Param(
                        "user_ids",
                        "query",
                        f"The users, comma-separated (1 to {MAX_BALANCE_IDS}; repeats are answered again)",
                        {
                            "type": "array",
                            "items": TypeAdapter(schemas.Id).json_schema(),
                            "minItems": 1,
                            "maxItems": MAX_BALANCE_IDS,
                        },
                        True,
                        explode=False,
                    ),
                ),
                description='Items in the order asked: a balance, or `{"user_id", "error": '
                '"account_not_found"}` for a user with no account.',
            )
        },
    ),
    Route(
        "/v1/users/{user_id}/transactions",
        TransactionsHandler,
        {
            "GET": Endpoint(
                "A user's transaction history (keyset pagination)",
                roles(Role.SUPPORT),
                {200: schemas.HistoryPage},
                params=(
                    USER_ID,
                    Param("sort", "query", "Sort key; ties by id", {"type": "string", "enum": list(history.SORTS)}),
                    Param("order", "query", "Sort order", {"type": "string", "enum": list(history.ORDERS)}),
                    Param(
                        "limit",
                        "query",
                        "Page size",
                        {
                            "type": "integer",
                            "minimum": 1,
                            "maximum": history.MAX_LIMIT,
                            "default": history.DEFAULT_LIMIT,
                        },
                    ),
                    Param("cursor", "query", "next_cursor of the previous page (opaque)", CURSOR),
                    Param(
                        "type",
                        "query",
                        "Comma-separated transaction types: " + ", ".join(TRANSACTION_TYPES),
                        {
                            "type": "string",
                            "pattern": "^({0})(,({0}))*$".format("|".join(TRANSACTION_TYPES)),
                            "examples": ["deposit,charge"],
                        },
                    ),
                    Param(
                        "from", "query", "Inclusive lower bound, RFC 3339", {"type": "string", "format": "date-time"}
                    ),
                    Param("to", "query", "Exclusive upper bound, RFC 3339", {"type": "string", "format": "date-time"}),
                ),
                errors=("invalid_cursor", "account_not_found"),
                tag="history",
                description="Send `Accept-Language: en` for English descriptions (Russian by default).",
            )
        },
    ),
    Route(
        "/v1/users/{user_id}/statements/{month}",
        StatementHandler,
        {
            "GET": Endpoint(
                "A user's monthly statement (JSON, or CSV with Accept: text/csv)",
                roles(Role.SUPPORT, Role.ACCOUNTING),
                {200: schemas.Statement},
                params=(USER_ID, Param("month", "path", "The month, YYYY-MM, in BILLING_REPORT_TZ", MONTH, True)),
                also=("text/csv",),
                errors=("account_not_found",),
                tag="history",
                description="Opening and closing balances (at the month's start and end), the sum of each "
                "transaction type and the count of the month's transactions; opening plus the movements "
                "equals closing. `Accept: text/csv`: `;`-separated UTF-8, CRLF, quoted as the revenue report: "
                "header `" + ";".join(accounting.CSV_HEADER) + "`, an `opening` line, one `transaction` line "
                "per transaction (oldest first), a `closing` line.",
            )
        },
    ),
    Route(
        "/v1/events",
        EventsHandler,
        {
            "GET": Endpoint(
                "The event feed: every ledger transaction as an event, for other services",
                roles(Role.EVENTS),
                {200: schemas.EventPage},
                params=(
                    Param(
                        "after",
                        "query",
                        "`next` of the previous page (opaque); without it the feed starts at the oldest event",
                        {**CURSOR, "maxLength": events.MAX_EVENT_CURSOR_LENGTH},
                    ),
                    Param(
                        "limit",
                        "query",
                        "Most events in the page",
                        {"type": "integer", "minimum": 1, "maximum": events.MAX_LIMIT, "default": events.DEFAULT_LIMIT},
                    ),
                    Param(
                        "wait",
                        "query",
                        "Seconds to hold the request open while no event is available (long poll)",
                        {"type": "integer", "minimum": 0, "maximum": events.MAX_WAIT, "default": 0},
                    ),
                ),
                errors=("invalid_cursor",),
                tag="events",
                description="Following `next` yields every event exactly once, each user's events in their order. "
                "`next` is returned with every page, empty ones too. Send `Accept-Language: en` for English "
                "descriptions in `data` (Russian by default).",
            )
        },
    ),
    Route(
        "/v1/webhooks",
        WebhooksHandler,
        {"GET": Endpoint("Every webhook (without secrets)", ADMIN, {200: schemas.WebhookList}, tag="events")},
    ),
    Route(
        "/v1/webhooks/{name}",
        WebhookHandler,
        {
            "PUT": Endpoint(
                "Create a webhook, or change the url and types of one",
                ADMIN,
                {200: schemas.Webhook},
                schemas.WebhookRequest,
                params=(WEBHOOK_NAME,),
                errors=("webhook_url_not_allowed",),
                tag="events",
                description="A new webhook gets a `secret` (shown this once) and receives the events made after "
                "this request; a PUT of an existing name changes `url` and `types` and keeps the secret and the "
                'position (its answer\'s `secret` is null). Deliveries: `POST <url>` with `{"events": [...]}` '
                f"(up to {dispatcher.BATCH_LIMIT}, in feed order), headers `Billing-Webhook-Id`, "
                "`Billing-Delivery-Id` and `Billing-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256 of "
                f'"<t>.<body>">`; a 2xx within {dispatcher.SEND_TIMEOUT_SECONDS:g} s acknowledges, anything else is '
                f"retried ({dispatcher.FIRST_DELAY_SECONDS:g} s doubling to {dispatcher.MAX_DELAY_SECONDS / 3600:g} h).",
            ),
            "GET": Endpoint(
                "A webhook and its delivery state",
                ADMIN,
                {200: schemas.WebhookStatus},
                params=(WEBHOOK_NAME,),
                errors=("webhook_not_found",),
                tag="events",
            ),
            "DELETE": Endpoint(
                "Delete a webhook (a delivery in flight may still arrive)",
                ADMIN,
                {204: None},
                params=(WEBHOOK_NAME,),
                errors=("webhook_not_found",),
                tag="events",
            ),
        },
    ),
    Route(
        "/v1/services",
        ServicesHandler,
        {"GET": Endpoint("The services catalog", ANY_ROLE, {200: schemas.ServiceList}, tag="services")},
    ),
    Route(
        "/v1/services/{service_id}",
        ServiceHandler,
        {
            "PUT": Endpoint(
                "Name a service in the catalog",
                ORDERS,
                {200: schemas.Service},
                schemas.ServiceNameRequest,
                params=(SERVICE_ID,),
                tag="services",
            )
        },
    ),
    Route(
        "/v1/batch",
        BatchHandler,
        {
            "POST": Endpoint(
                "Many money operations in one request, each atomic, idempotent and authorized alone",
                ANY_ROLE,
                {200: schemas.BatchResponse},
                schemas.BatchRequest,
                description="Each operation: `op` (" + ", ".join(OPERATION_ROLES) + "), an optional "
                "`idempotency_key`, and the fields of that operation's endpoint. Results are in order.",
            )
        },
        args={"operation_roles": OPERATION_ROLES},
    ),
    Route(
        "/v1/reports/revenue",
        RevenueReportHandler,
        {
            "GET": Endpoint(
                "A signed link to the monthly revenue report (CSV)",
                roles(Role.ACCOUNTING),
                {200: schemas.ReportLink},
                params=(
                    Param("month", "query", "The month, YYYY-MM, in BILLING_REPORT_TZ", MONTH, True),
                    Param("bom", "query", "Put bom=1|0 into the link (UTF-8 BOM for Excel)", BOM_FLAG),
                ),
                tag="reports",
            )
        },
    ),
    Route(
        "/v1/reports/revenue/{month}.csv",
        RevenueCsvHandler,
        {
            "GET": Endpoint(
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
            )
        },
    ),
    Route(
        "/healthz",
        HealthHandler,
        {"GET": Endpoint("Liveness", NO_AUTH, {200: schemas.Health}, tag="operations", store=False)},
    ),
    Route(
        "/readyz",
        ReadyHandler,
        {"GET": Endpoint("Readiness: Redis and MongoDB answer", NO_AUTH, {200: schemas.Health}, tag="operations")},
    ),
    Route(
        "/metrics",
        MetricsHandler,
        {
            "GET": Endpoint(
                "Prometheus metrics (text exposition format)",
                NO_AUTH,
                {200: "text/plain; version=0.0.4"},
                tag="operations",
                store=False,
            )
        },
    ),
    Route(
        SPEC_URL,
        OpenAPIHandler,
        {"GET": Endpoint("This OpenAPI document", NO_AUTH, {200: "application/json"}, tag="operations", store=False)},
    ),
    Route(DOCS_PREFIX, DocsHandler, {}, pattern=DOCS_PREFIX + "/?"),
    Route(DOCS_PREFIX + "/static/{file}", DocsAssetHandler, {}, pattern=DOCS_PREFIX + "/static/(.+)"),
)

# (METHOD, template) -> endpoint: every operation of the API document.
ENDPOINTS: dict[tuple[str, str], Endpoint] = {
    (method, route.template): endpoint for route in ROUTES for method, endpoint in route.methods.items()
}


def router_rules(ctx: Any) -> list[tuple[str, type[Any], dict[str, Any]]]:
    """The table as Tornado rules: each handler gets the context and its route."""
    return [(route.regex, route.handler, {"ctx": ctx, "route": route, **route.args}) for route in ROUTES]
