"""The base handler: auth, content type, body size, request ids, and one problem+json renderer."""

from __future__ import annotations

import itertools
import logging
import os
import secrets
from typing import TYPE_CHECKING, Any

import orjson
import tornado
import tornado.web
from tornado.http1connection import HTTP1Connection
from tornado.httputil import HTTPServerRequest

from billing.api.auth import Principal
from billing.api.context import ApiContext
from billing.api.jsonbody import parse_json_object
from billing.core.errors import PROBLEM_CONTENT_TYPE, ApiError, problem_body
from billing.core.forwarding import HSTS_VALUE, TRUSTED_PROXIES_SETTING, Origin, request_origin
from billing.core.parsing import (
    ParseError,
    field_error,
    id_list,
    id_text,
    idempotency_key,
    query_value,
    visible_ascii,
)
from billing.ledger.scripts import Idempotency
from billing.ledger.unavailable import UNAVAILABLE_ERRORS as UNAVAILABLE_ERRORS  # (the console catches them too)
from billing.ledger.unavailable import store_unavailable
from billing.views.descriptions import negotiate_language

if TYPE_CHECKING:  # (the route table names the handlers, so they see it only as a type)
    from billing.api.endpoint import Route

log = logging.getLogger("billing.http")
access_log = logging.getLogger("billing.access")

BODY_LIMIT = 64 * 1024
MAX_BODY_BYTES = 8 * 1024 * 1024  # the server's own limit; see refuse_declared_length() for the routes' ones
_HTTP_CODES = {404: "not_found", 405: "method_not_allowed", 413: "payload_too_large", 400: "validation_error"}


class _RequestIds:
    """Request ids: a random prefix per process and a counter; 4x cheaper than uuid4 per request."""

    def __init__(self) -> None:
        self.reseed()
        os.register_at_fork(after_in_child=self.reseed)  # workers never share a prefix

    def reseed(self) -> None:
        self.prefix = secrets.token_hex(8)
        self.counter = itertools.count(1)

    def next(self) -> str:
        return f"{self.prefix}{next(self.counter):016x}"


_request_ids = _RequestIds()


class OriginAware(tornado.web.RequestHandler):
    """Every handler of ours, pages and files too: the believed origin, and HSTS on HTTPS answers."""

    _origin: Origin | None = None

    @property
    def origin(self) -> Origin:
        """Client address, scheme and host, X-Forwarded-* believed from trusted proxies only (computed once per
        request; a plain attribute, since functools.cached_property takes a lock on every first read)."""
        origin = self._origin
        if origin is None:
            origin = self._origin = request_origin(
                self.request, self.application.settings.get(TRUSTED_PROXIES_SETTING, ())
            )
        return origin

    def set_default_headers(self) -> None:
        if self.origin.https:
            self.set_header("Strict-Transport-Security", HSTS_VALUE)


class RequestHooks(OriginAware):
    """What every handler of ours shares, API or console: quiet logs for expected errors, the finish hook."""

    ctx: ApiContext
    expected_errors: tuple[type[Exception], ...] = (ApiError,)

    def log_exception(self, typ: Any, value: Any, tb: Any) -> None:
        if isinstance(value, self.expected_errors):
            return
        if isinstance(value, tornado.web.HTTPError) and value.status_code < 500:
            return
        if store_unavailable(value):
            log.warning("backing store unavailable: %s: %s", type(value).__name__, value)
            return
        super().log_exception(typ, value, tb)

    def on_finish(self) -> None:
        self.ctx.request_observer.finished(self)


class BaseHandler(RequestHooks):
    """Every route derives from this: one error format, one access log line.

    A request whose body fits the route's limit is read whole before prepare(), as Tornado reads bodies by
    default. One that declares a longer body, sends it chunked (no length to check beforehand) or waits for
    "100 Continue" is served by the route's streamed variant (streamed_handler()): prepare() runs on the
    headers, so it is refused unread, and a chunked body is counted as it arrives. Streaming every request
    would cost each one a further event-loop round on Tornado's body future.
    """

    body_limit = BODY_LIMIT
    streamed = False  # True in the streamed variant only

    def initialize(self, ctx: ApiContext, route: Route | None = None, **kwargs: Any) -> None:
        self.ctx = ctx
        self.route = route  # its entry in the route table (billing/api/routes.py); None: no route matched
        self.principal: Principal | None = None
        self.error_code: str | None = None
        self.request_id = ""
        self.body_chunks: list[bytes] = []
        self.body_size = 0
        self.deferred_error: Exception | None = None
        for key, value in kwargs.items():
            setattr(self, key, value)

    def clear(self) -> None:
        """Tornado's clear() (also run before an error answer), then no-store on every answer."""
        super().clear()
        self.set_header("Cache-Control", "no-store")

    def compute_etag(self) -> str | None:
        """None: API answers are Cache-Control: no-store, so hashing every GET body for an ETag is wasted."""
        return None

    def check_etag_header(self) -> bool:
        """False: with no ETag there is nothing to match If-None-Match against (skips its parsing per GET)."""
        return False

    def prepare(self) -> None:
        self.begin_request()
        try:
            self.check_request()
        except Exception as exc:
            if not self.drain_before(exc):
                raise

    def check_request(self) -> None:
        """What the headers alone decide: method, token, media type, declared length (the body is not read yet)."""
        method = self.request.method or "GET"
        if getattr(type(self), method.lower(), None) is getattr(tornado.web.RequestHandler, method.lower(), None):
            raise tornado.web.HTTPError(405)
        roles = self.required_roles(method)
        if roles:
            self.principal = self.ctx.auth.authorize(self.request.headers.get("Authorization"), roles)
        if method in ("POST", "PUT", "PATCH"):
            media_type = self.request.headers.get("Content-Type", "").split(";", 1)[0].strip().lower()
            if media_type != "application/json":
                raise ApiError("unsupported_media_type", "Send the body as Content-Type: application/json")
        declared = self.declared_length()
        if declared is not None and declared > self.body_limit:
            raise self.too_large()

    def declared_length(self) -> int | None:
        return content_length(self.request)

    def drain_before(self, error: Exception) -> bool:
        """Whether to read (and drop) the declared body before answering this refusal: True, and data_received()
        answers at its last byte.

        Answered at once, the connection closes with the body unread, and a client that sent the body with
        its headers (most do) may get a TCP reset instead of the answer. So a body up to MAX_BODY_BYTES is
        drained first; a longer one, or one the client holds back for "100 Continue", is answered at once.
        """
        declared = self.declared_length()
        if (
            not self.streamed  # the body was read already
            or not declared
            or declared > MAX_BODY_BYTES
            or (header(self.request, "Expect") or "").lower() == "100-continue"
        ):
            return False
        self.deferred_error = error
        return True

    def drop_unread_body(self) -> None:
        """Before an answer that may come ahead of the body (any error in prepare()): Tornado then skips the body
        and closes the connection once the answer is written; but for a length over its own limit it would
        write a bare 400 behind our answer, unless its limit for this one request is that length."""
        declared = self.declared_length()
        connection = self.request.connection
        if declared is not None and isinstance(connection, HTTP1Connection):
            connection.set_max_body_size(declared)

    def too_large(self) -> ApiError:
        return ApiError("payload_too_large", f"Body is over {self.body_limit} bytes")

    def data_received(self, chunk: bytes) -> None:
        """Body bytes as they arrive (after prepare()): kept up to the route's limit, never beyond."""
        self.body_size += len(chunk)
        if self.deferred_error is not None:  # refused from the headers: drop the body, answer at its end
            if self.body_size >= (self.declared_length() or 0):
                self.answer(self.deferred_error)
            return
        if self.body_size > self.body_limit:  # chunked: no length to check beforehand; refused as it passes
            self.body_chunks.clear()
            self.answer(self.too_large())
            return
        self.body_chunks.append(chunk)

    def answer(self, error: Exception) -> None:
        """Answer a refusal from data_received(); Tornado drops the rest of the body and closes the connection."""
        self.log_exception(type(error), error, None)
        status = error.status if isinstance(error, ApiError) else getattr(error, "status_code", 500)
        self.send_error(status, exc_info=(type(error), error, None))

    @property
    def body(self) -> bytes:
        return b"".join(self.body_chunks) if self.streamed else self.request.body

    def on_connection_close(self) -> None:
        """The client left before the answer (mid-body, or while it was being computed)."""
        super().on_connection_close()
        self.ctx.request_observer.abandoned(self)

    def begin_request(self) -> None:
        """What every request does first, routed or not: the started hook and its request id."""
        self.ctx.request_observer.started(self)
        self.assign_request_id()

    def assign_request_id(self) -> None:
        incoming = header(self.request, "X-Request-ID") or ""
        self.request_id = incoming if visible_ascii(incoming, 200) else _request_ids.next()
        self.set_header("X-Request-ID", self.request_id)

    @property
    def route_name(self) -> str:
        """The route's template, for the access log and metrics ("" when no route matched)."""
        return self.route.template if self.route is not None else ""

    def required_roles(self, method: str) -> frozenset[str]:
        """Roles that may call this route with this method (any one suffices; admin always); empty: no token."""
        return self.route.roles(method) if self.route is not None else frozenset()

    # ---- helpers for subclasses -------------------------------------------------------------

    _lang: str | None = None

    @property
    def lang(self) -> str:
        """The answer's language, negotiated once per request (an operation asks for it twice)."""
        lang = self._lang
        if lang is None:
            lang = self._lang = negotiate_language(header(self.request, "Accept-Language"))
        return lang

    def json_body(self) -> dict[str, Any]:
        return parse_json_object(self.body)

    def idempotency(self) -> Idempotency | None:
        # The header's value as HTTP defines it: the optional whitespace around it is not part of it.
        key = self.request.headers.get("Idempotency-Key")
        if key is None:
            return None
        try:
            idempotency_key(key)
        except ParseError as exc:
            raise field_error("Idempotency-Key", exc) from None
        assert self.principal is not None
        return Idempotency(scope=self.principal.name, key=key)

    def write_json(self, status: int, body: Any, replayed: bool = False) -> None:
        self.set_status(status)
        if replayed:
            self.set_header("Idempotent-Replayed", "true")
        if status >= 400 and isinstance(body, dict) and "code" in body:
            self.error_code = body["code"]
            self.set_header("Content-Type", PROBLEM_CONTENT_TYPE)
        else:
            self.set_header("Content-Type", "application/json")
        self.finish(orjson.dumps(body))

    def path_id(self, raw: str, field: str) -> int:
        """An id in a path or query, exactly as sent: ASCII digits, 1 to 2^63-1 (parsing.id_text)."""
        try:
            return id_text(raw)
        except ParseError as exc:
            raise field_error(field, exc) from None

    def query_id(self, name: str) -> int:
        """A required id in the query string, exactly as sent (no stripping, given once)."""
        try:
            return id_text(query_value(self.request.query_arguments, name) or "")
        except ParseError as exc:
            raise field_error(name, exc) from None

    def query_ids(self, name: str, at_most: int) -> list[int]:
        """A required comma-separated list of ids in the query string (parsing.id_list), given once."""
        try:
            return id_list(query_value(self.request.query_arguments, name) or "", at_most)
        except ParseError as exc:
            raise field_error(name, exc) from None

    # ---- errors ----------------------------------------------------------------------------

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        exc = kwargs.get("exc_info", (None, None, None))[1]
        headers: dict[str, str] = {}
        if isinstance(exc, ApiError):
            body = exc.to_problem()
            headers = exc.headers
        elif store_unavailable(exc):
            body = problem_body("unavailable", "A backing store is unreachable; retry with the same Idempotency-Key")
            headers = {"Retry-After": "1"}
        elif status_code in _HTTP_CODES:
            body = problem_body(_HTTP_CODES[status_code])
            if status_code == 405:
                headers = {"Allow": ", ".join(self._allowed_methods())}
        else:
            body = problem_body("internal_error", f"Request {self.request_id} failed; it is logged")
        self.error_code = body["code"]
        self.set_status(body["status"])
        if self.request_id:
            self.set_header("X-Request-ID", self.request_id)
        else:  # refused before prepare() (an invented method): still traceable
            self.assign_request_id()
        self.drop_unread_body()
        for name, value in headers.items():
            self.set_header(name, value)
        self.set_header("Content-Type", PROBLEM_CONTENT_TYPE)
        self.finish(orjson.dumps(body))

    def _allowed_methods(self) -> list[str]:
        return [
            m
            for m in ("GET", "POST", "PUT", "DELETE", "PATCH")
            if getattr(type(self), m.lower()) is not getattr(tornado.web.RequestHandler, m.lower())
        ]


def header(request: HTTPServerRequest, name: str) -> str | None:
    """A request header, None when it is absent. HTTPHeaders.get() finds a header absent by catching the
    KeyError of its __getitem__, about three times the cost of a membership test and a read (for headers most
    requests leave out: X-Request-ID, Expect)."""
    headers = request.headers
    return headers[name] if name in headers else None  # noqa: SIM401 - see above


def needs_streaming(request: HTTPServerRequest, limit: int) -> bool:
    """Whether a request's body must be taken as it arrives: over the limit, of unknown length, or awaited."""
    headers = request.headers
    if "Transfer-Encoding" in headers or (header(request, "Expect") or "").lower() == "100-continue":
        return True
    if "Content-Length" not in headers:
        return False
    declared = content_length(request)
    return declared is None or declared > limit  # (malformed: refused unread)


def content_length(request: HTTPServerRequest) -> int | None:
    """The declared body length; None when there is none or it is not ASCII digits."""
    declared = request.headers.get("Content-Length", "")
    return int(declared) if declared.isascii() and declared.isdigit() else None


_STREAMED: dict[type[BaseHandler], type[BaseHandler]] = {}


def _streamed_variant(handler: type[BaseHandler]) -> type[BaseHandler]:
    variant = _STREAMED.get(handler)
    if variant is None:
        variant = type(handler.__name__, (handler,), {"streamed": True, "__doc__": handler.__doc__})
        variant = _STREAMED[handler] = tornado.web.stream_request_body(variant)
    return variant


def streamed_handler(handler: type[tornado.web.RequestHandler], request: HTTPServerRequest) -> type[Any]:
    """The handler class to serve this request with: the route's own, or its streamed variant (BaseHandler)."""
    if issubclass(handler, BaseHandler) and not handler.streamed and needs_streaming(request, handler.body_limit):
        return _streamed_variant(handler)
    return handler


@tornado.web.stream_request_body  # every unknown path, whatever its body: refused on the headers
class NotFoundHandler(BaseHandler):
    """Any unknown path, any method."""

    streamed = True

    def prepare(self) -> None:
        # No route is the answer whatever the method, token or body: 404 before any other check (not 415).
        self.begin_request()
        raise ApiError("not_found", f"No route for {self.request.path}")

    def _allowed_methods(self) -> list[str]:
        return []

    def get(self) -> None:  # pragma: no cover - prepare always raises
        pass

    post = put = delete = patch = head = options = get
