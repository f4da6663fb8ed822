"""make_app(): the routes table, composed from a Context."""

from __future__ import annotations

from typing import Any

import tornado.web

from billing.api.handlers.accounts import BalanceHandler
from billing.api.handlers.base import NotFoundHandler
from billing.api.handlers.batch import BatchHandler
from billing.api.handlers.health import HealthHandler, ReadyHandler
from billing.api.handlers.history import TransactionsHandler
from billing.api.handlers.operations import OperationHandler
from billing.api.handlers.ops import ops_routes
from billing.api.handlers.reports import RevenueCsvHandler, RevenueReportHandler
from billing.api.handlers.reservations import ReservationsHandler
from billing.api.handlers.services import ServiceHandler, ServicesHandler
from billing.bootstrap import Context
from billing.console.pages import console_routes
from billing.console.session import cookie_secret
from billing.core.forwarding import TRUSTED_PROXIES_SETTING
from billing.ledger.service import OPERATIONS

ID = r"([^/]+)"


def routes(ctx: Context) -> list[Any]:
    args = {"ctx": ctx}
    table: list[Any] = [
        (spec.path, ReservationsHandler if spec.name == "reserve" else OperationHandler, {"ctx": ctx, "spec": spec})
        for spec in OPERATIONS.values()
    ]
    table += [
        (rf"/v1/users/{ID}/balance", BalanceHandler, args),
        (rf"/v1/users/{ID}/transactions", TransactionsHandler, args),
        (r"/v1/services", ServicesHandler, args),
        (rf"/v1/services/{ID}", ServiceHandler, args),
        (r"/v1/batch", BatchHandler, args),
        (r"/v1/reports/revenue", RevenueReportHandler, args),
        (r"/v1/reports/revenue/([^/]+)\.csv", RevenueCsvHandler, args),
        (r"/healthz", HealthHandler, args),
        (r"/readyz", ReadyHandler, args),
    ]
    table += ops_routes(ctx)  # /openapi.json, /docs, /metrics (each route needs an entry in billing/api/openapi.py)
    table += console_routes(ctx)  # HTML pages under /console (not part of the JSON API)
    return table


def _no_tornado_access_log(handler: tornado.web.RequestHandler) -> None:
    """billing.access writes one JSON line per request (billing/infra/observability.py); tornado's would duplicate it."""


def make_app(ctx: Context, **settings: Any) -> tornado.web.Application:
    settings.setdefault("log_function", _no_tornado_access_log)
    if ctx is not None:  # (route-table tests build the app without a context)
        settings.setdefault("cookie_secret", cookie_secret(ctx.settings))  # the console's signed session cookie
        settings.setdefault(TRUSTED_PROXIES_SETTING, ctx.settings.trusted_proxies)
    return tornado.web.Application(
        routes(ctx),
        default_handler_class=NotFoundHandler,
        default_handler_args={"ctx": ctx},
        compress_response=False,
        **settings,
    )
