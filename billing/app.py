"""make_app(): the Tornado application of the route table (billing/api/routes.py) and the console."""

from __future__ import annotations

from typing import Any

import tornado.httputil
import tornado.web

from billing.api.handlers.base import NotFoundHandler, streamed_handler
from billing.api.handlers.ops import OPENAPI_BUILDER
from billing.api.openapi import build_spec
from billing.api.routes import router_rules
from billing.bootstrap import Context
from billing.console.pages import console_routes
from billing.console.session import cookie_secret
from billing.core.forwarding import TRUSTED_PROXIES_SETTING


def routes(ctx: Context) -> list[Any]:
    table: list[Any] = []
    table += router_rules(ctx)  # the API, /openapi.json, /docs, /metrics: billing/api/routes.py
    table += console_routes(ctx)  # HTML pages under /console (not part of the JSON API)
    return table


def _no_tornado_access_log(handler: tornado.web.RequestHandler) -> None:
    """billing.access writes one JSON line per request (billing/infra/observability.py); tornado's would duplicate it."""


class Application(tornado.web.Application):
    """Tornado's application, serving a request with a long or unsized body by its route's streamed variant."""

    def get_handler_delegate(
        self,
        request: tornado.httputil.HTTPServerRequest,
        target_class: type[tornado.web.RequestHandler],
        target_kwargs: dict[str, Any] | None = None,
        path_args: list[bytes] | None = None,
        path_kwargs: dict[str, bytes] | None = None,
    ) -> Any:
        handler = streamed_handler(target_class, request)
        return super().get_handler_delegate(request, handler, target_kwargs, path_args, path_kwargs)


def make_app(ctx: Context, **settings: Any) -> tornado.web.Application:
    settings.setdefault("log_function", _no_tornado_access_log)
    settings.setdefault(OPENAPI_BUILDER, build_spec)
    if ctx is not None:  # (route-table tests build the app without a context)
        settings.setdefault("cookie_secret", cookie_secret(ctx.settings))  # the console's signed session cookie
        settings.setdefault(TRUSTED_PROXIES_SETTING, ctx.settings.trusted_proxies)
    return Application(
        routes(ctx),
        default_handler_class=NotFoundHandler,
        default_handler_args={"ctx": ctx},
        compress_response=False,
        **settings,
    )
