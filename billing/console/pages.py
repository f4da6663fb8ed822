"""The console's pages under /console: sign in and out, look-ups of a user, a transaction or an order
(support), monthly revenue (accounting), users' monthly statements (support, accounting), the audit log
(admin)."""

from __future__ import annotations

import hashlib
import logging
import math
import re
import uuid
from collections.abc import Awaitable, Callable
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlencode
from zoneinfo import ZoneInfo

import tornado.web

from billing.api.auth import Principal
from billing.api.context import ApiContext
from billing.api.handlers.base import UNAVAILABLE_ERRORS, OriginAware, RequestHooks
from billing.console.accounting_pages import balance_at_view, parse_user, statement_view
from billing.console.accounts import NAME_PATTERN, Accounts, SignInLimit
from billing.console.audit import AuditLog
from billing.console.display import local_time, shown
from billing.console.history_view import BadState, HistoryState
from billing.console.lookups import (
    BadLookup,
    OrderView,
    find_target,
    order_ref,
    order_url,
    order_view,
    transaction_id,
    transaction_view,
)
from billing.console.session import (
    LANG_COOKIE,
    SESSION_COOKIE,
    SESSION_MAX_AGE_DAYS,
    XSRF_COOKIE,
    Sessions,
    cookie_flags,
    person_value,
    session_value,
)
from billing.console.text import TEXT, other_language, pick_language
from billing.core.errors import ApiError
from billing.core.money import format_kopecks
from billing.core.parsing import ParseError, form_value, id_text, query_lists
from billing.core.parsing import month as parse_month
from billing.core.roles import Role, roles
from billing.core.timefmt import load_zone
from billing.core.transactions import TRANSACTION_TYPES
from billing.projection.store import LedgerStore
from billing.views.descriptions import SUPPORTED_LANGUAGES
from billing.views.render import render_reservation

log = logging.getLogger("billing.console")

PACKAGE_DIR = Path(__file__).resolve().parent.parent
TEMPLATE_DIR = PACKAGE_DIR / "templates"
STATIC_DIR = PACKAGE_DIR / "static"
CSS_URL = "/console/static/console.css?v=" + hashlib.sha256((STATIC_DIR / "console.css").read_bytes()).hexdigest()[:12]

# No script may run on a console page at all: the pages are plain HTML forms and links.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'none'; object-src 'none'; base-uri 'none'; "
    "form-action 'self'; frame-ancestors 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
}
SUPPORT = roles(Role.SUPPORT)  # the user page: balance, reservations, history
ACCOUNTING = roles(Role.ACCOUNTING)  # the reports page
ADMIN = roles(Role.ADMIN)  # the audit log
STATEMENTS = roles(Role.SUPPORT, Role.ACCOUNTING)  # a user's monthly statement
STREAM_ID = re.compile(r"[0-9]{1,20}-[0-9]{1,20}")


_Found = TypeVar("_Found")


class ConsoleError(Exception):
    """Stops a console request with an HTML page: 401 shows the sign-in form, others an error page."""

    def __init__(self, status: int, key: str, **params: Any) -> None:
        super().__init__(key)
        self.status, self.key, self.params = status, key, params


class ConsoleHandler(RequestHooks):
    """Base of every console page: security headers, language, CSRF on POST, session and role checks."""

    roles: frozenset[str] = frozenset()  # any one of them (admin always); empty: any signed-in principal
    public = False  # pages anyone may see (the sign-in form)
    route_name = "/console"
    expected_errors = (ConsoleError,)

    def initialize(self, ctx: ApiContext) -> None:
        self.ctx = ctx
        self.principal: Principal | None = None
        self.error_code: str | None = None
        self.request_id = uuid.uuid4().hex
        self.lang = "ru"

    @property
    def settings(self) -> dict[str, Any]:
        """The application's settings plus this console's CSRF cookie (own name, flags, Secure over HTTPS).

        CSRF is checked by the console's handlers only (see prepare); the JSON API authenticates with a
        bearer header, which a browser never sends on its own, so it needs no CSRF token.
        """
        merged = dict(self.application.settings)
        merged["xsrf_cookie_name"] = XSRF_COOKIE
        merged["xsrf_cookie_kwargs"] = cookie_flags(self.secure)
        return merged

    @property
    def secure(self) -> bool:
        """HTTPS directly or, by X-Forwarded-Proto, behind a trusted proxy: cookies then get Secure."""
        return self.origin.https

    def set_default_headers(self) -> None:
        super().set_default_headers()
        for name, value in SECURITY_HEADERS.items():
            self.set_header(name, value)
        self.set_header("Cache-Control", "no-store")
        if getattr(self, "request_id", None):  # also after send_error() cleared the headers
            self.set_header("X-Request-ID", self.request_id)

    def get_template_path(self) -> str:
        return str(TEMPLATE_DIR)

    @property
    def sessions(self) -> Sessions:
        return Sessions(self.ctx.redis, self.ctx.ledger.keys)

    @property
    def audit(self) -> AuditLog:
        return AuditLog(self.ctx.redis, self.ctx.ledger.keys, self.ctx.settings.console_audit_maxlen)

    def session_id(self) -> bytes | None:
        """The session id from the signed cookie (None if absent, tampered with or older than a day)."""
        return self.get_signed_cookie(SESSION_COOKIE, max_age_days=SESSION_MAX_AGE_DAYS)

    async def prepare(self) -> None:
        self.ctx.request_observer.started(self)  # the access log and metrics, as for the API
        wanted = form_value(self.request.query_arguments, "lang") or None
        self.lang = pick_language(wanted, self.get_cookie(LANG_COOKIE), self.request.headers.get("Accept-Language"))
        if wanted in SUPPORTED_LANGUAGES and wanted != self.get_cookie(LANG_COOKIE):
            self.set_cookie(LANG_COOKIE, wanted, expires_days=365, **cookie_flags(self.secure))
        if self.request.method == "POST":
            try:
                self.check_xsrf_cookie()
            except tornado.web.HTTPError as exc:
                raise ConsoleError(403, "csrf") from exc
        self.principal = self.current_user = await self.sessions.principal(self.session_id(), self.ctx.auth)
        if self.public:
            return
        if self.principal is None:
            raise ConsoleError(401, "sign_in_needed")
        if self.roles and not self.principal.has_any(self.roles):
            raise ConsoleError(403, "forbidden", roles=", ".join(sorted(self.roles)))

    # ---- rendering ----------------------------------------------------------------------------

    def get_template_namespace(self) -> dict[str, Any]:
        namespace = super().get_template_namespace()
        principal = self.principal
        namespace.update(
            t=TEXT[self.lang],
            lang=self.lang,
            principal=principal,
            can_users=principal is not None and principal.has_any(SUPPORT),
            can_reports=principal is not None and principal.has_any(ACCOUNTING),
            can_statements=principal is not None and principal.has_any(STATEMENTS),
            can_audit=principal is not None and principal.has_any(ADMIN),
            switch_url=self.url_with(lang=other_language(self.lang)),
            css_url=CSS_URL,
            zone=self.ctx.settings.report_tz,  # named on every page; every time shown is in it
            short_time=self.local_time,
            shown=shown,  # every user-provided text on a page goes through it
            active=self.route_name,
        )
        return namespace

    @property
    def zone(self) -> ZoneInfo:
        return load_zone(self.ctx.settings.report_tz)

    def local_time(self, moment: str | int | None) -> str:
        """A time in BILLING_REPORT_TZ, as every console page shows times (templates call it short_time)."""
        return local_time(moment, self.zone)

    def this_month(self) -> str:
        return datetime.now(self.zone).strftime("%Y-%m")

    def url_with(self, **changes: str) -> str:
        """This page's URL (GET) with some query parameters replaced."""
        pairs = [
            (name, value.decode("utf-8", "replace"))
            for name, values in self.request.query_arguments.items()
            if name not in changes
            for value in values
        ]
        pairs += list(changes.items())
        return self.request.path + "?" + urlencode(pairs)

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        exc = kwargs.get("exc_info", (None, None, None))[1]
        params: dict[str, Any] = {}
        if isinstance(exc, ConsoleError):
            status, key, params = exc.status, exc.key, exc.params
        elif isinstance(exc, UNAVAILABLE_ERRORS):
            status, key = 503, "store_down"
            self.set_header("Retry-After", "1")
        elif status_code in (404, 405):
            status, key = 404 if status_code == 404 else 405, "not_found"
        else:
            status, key, params = 500, "internal", {"request_id": self.request_id}
        self.error_code = key
        self.set_status(status)
        if status == 401:
            self.render(
                "console_login.html", error=TEXT[self.lang][key], next_url=self.request.uri or "/console", name=""
            )
            return
        title_key = "forbidden_title" if status == 403 else "error_title"
        self.render(
            "console_error.html", title=TEXT[self.lang][title_key], message=TEXT[self.lang][key].format(**params)
        )


def safe_next(raw: str | None) -> str:
    """Where to go after signing in: a console path on this site only (no open redirect)."""
    if raw and raw.startswith("/console") and not raw.startswith("//") and "\\" not in raw:
        return raw
    return "/console"


class LoginHandler(ConsoleHandler):
    public = True
    route_name = "/console/login"

    def get(self) -> None:
        if self.principal is not None:
            self.redirect(safe_next(self.get_query_argument("next", None)))
            return
        next_url = safe_next(self.get_query_argument("next", None))
        self.render("console_login.html", error=None, next_url=next_url, name="")

    async def post(self) -> None:
        """A person signs in with name and password (form fields name, password), an admin or script with
        a token (field token). Failures count per client address, and per account name for a person."""
        next_url = safe_next(self.get_body_argument("next", None))
        person = self.get_body_argument("name", None) is not None
        name = self.get_body_argument("name", "").strip() if person else ""
        limited = name if person and NAME_PATTERN.fullmatch(name) else None  # only names an account could have
        limit = SignInLimit(self.ctx.redis, self.ctx.ledger.keys)
        address = self.origin.remote_ip
        wait = await limit.wait_seconds(limited, address)
        if wait:  # refused without checking the password, so guessing gains nothing
            minutes = max(1, math.ceil(wait / 60))
            self.set_status(429)
            self.set_header("Retry-After", str(wait))
            self.error_code = "too_many"
            log.warning("console sign-in refused, too many failures: name=%r address=%s", name, address)
            message = TEXT[self.lang]["too_many"].format(minutes=minutes)
            self.render("console_login.html", error=message, next_url=next_url, name=name)
            return
        if person:
            account = await Accounts(self.ctx.redis, self.ctx.ledger.keys).authenticate(
                name, self.get_body_argument("password", "")
            )
            found = (person_value(account), account.principal()) if account is not None else None
        else:
            found = session_value(self.get_body_argument("token", ""), self.ctx.auth)
        if found is None:
            await limit.failed(limited, address)
            self.set_status(401)
            self.error_code = "bad_credentials" if person else "bad_token"
            error = TEXT[self.lang][self.error_code]
            self.render("console_login.html", error=error, next_url=next_url, name=name)
            return
        if person:
            await limit.succeeded(name)
        value, principal = found
        self.principal = principal
        await self.sessions.end(self.session_id())  # signing in again replaces the session, never adds one
        session_id = await self.sessions.start(value)
        self.set_signed_cookie(SESSION_COOKIE, session_id, expires_days=None, **cookie_flags(self.secure))
        log.info("console sign-in: %s", principal.name)
        self.redirect(next_url, status=303)


class LogoutHandler(ConsoleHandler):
    public = True
    route_name = "/console/logout"

    async def post(self) -> None:
        await self.sessions.end(self.session_id())  # a copy of the cookie stops working too
        self.clear_cookie(SESSION_COOKIE, path="/console")
        self.redirect("/console/login", status=303)


class HomeHandler(ConsoleHandler):
    route_name = "/console"

    def get(self) -> None:
        self.render("console_home.html", find=FIND_BLANK, error=None)


FIND_FIELDS = ("user", "transaction", "service", "order")
FIND_BLANK = dict.fromkeys(FIND_FIELDS, "")


class FindHandler(ConsoleHandler):
    """The home page's search form: a user id, a transaction id, or a service id and an order id; it leads to
    that page, or shows the home page again with what is wrong (400)."""

    roles = SUPPORT
    route_name = "/console/find"

    def get(self) -> None:
        find = {name: form_value(self.request.query_arguments, name) for name in FIND_FIELDS}
        try:
            target = find_target(**find)
        except BadLookup as exc:
            self.set_status(400)
            self.render("console_home.html", find=find, error=TEXT[self.lang][exc.key])
            return
        self.redirect(target, status=303)


class TransactionHandler(ConsoleHandler):
    """Support's look-up of one transaction by its id: its user, type, amount, time, description and hash."""

    roles = SUPPORT
    route_name = "/console/transactions"

    async def get(self) -> None:
        raw = form_value(self.request.query_arguments, "id")
        view: dict[str, Any] = {"find": {**FIND_BLANK, "transaction": raw}, "error": None, "item": None}

        async def find() -> tuple[int, dict[str, Any] | None]:
            txn_id = transaction_id(raw)
            return txn_id, await transaction_view(LedgerStore(self.ctx.mongo), self.ctx.ledger, txn_id, self.lang)

        found = await self.look_up(view, find)
        if found is not None:
            txn_id, item = found
            if item is None:
                self.set_status(404)
                view["error"] = TEXT[self.lang]["unknown_transaction"].format(id=txn_id)
            else:
                await self.audited(item["user_id"])
                view["item"] = item
                if "order_id" in item:
                    view["order_url"] = order_url(item["service_id"], item["order_id"])
        self.render("console_transaction.html", **view)

    async def look_up(self, view: dict[str, Any], find: Callable[[], Awaitable[_Found]]) -> _Found | None:
        """What find() looks up; None, with the page's status and error set, when the input is malformed (400) or
        a store is down (503)."""
        try:
            return await find()
        except BadLookup as exc:
            self.set_status(400)
            view["error"] = TEXT[self.lang][exc.key]
        except UNAVAILABLE_ERRORS:
            self.set_status(503)
            view["error"] = TEXT[self.lang]["store_down"]
        return None

    async def audited(self, user_id: int) -> None:
        if self.principal is not None:  # always, after prepare(); recorded before anything is shown
            await self.audit.record(self.principal, self.route_name, user_id, self.origin.remote_ip)


class OrderHandler(TransactionHandler):
    """Support's look-up of an order by (service id, order id): each user's reservation and its transactions."""

    route_name = "/console/orders"

    async def get(self) -> None:
        raw_service = form_value(self.request.query_arguments, "service")
        raw_order = form_value(self.request.query_arguments, "order")
        view: dict[str, Any] = {
            "find": {**FIND_BLANK, "service": raw_service, "order": raw_order},
            "error": None,
            "order": None,
        }

        async def find() -> tuple[int, int, OrderView | None]:
            service_id, order_id = order_ref(raw_service, raw_order)
            store = LedgerStore(self.ctx.mongo)
            return service_id, order_id, await order_view(store, self.ctx.ledger, service_id, order_id, self.lang)

        found = await self.look_up(view, find)
        if found is not None:
            service_id, order_id, order = found
            if order is None:
                self.set_status(404)
                view["error"] = TEXT[self.lang]["unknown_order"].format(service=service_id, order=order_id)
            else:
                for user_id in order.user_ids:
                    await self.audited(user_id)
                view["order"] = order
        self.render("console_order.html", **view)


class UserHandler(ConsoleHandler):
    """Support's user lookup: balance, open reservations and the history table."""

    roles = SUPPORT
    route_name = "/console/users"

    async def get(self) -> None:
        view: dict[str, Any] = {"state": None, "error": None, "balance": None, "reservations": [], "history": None}
        raw_user = form_value(self.request.query_arguments, "user")
        view.update(history_error=None, lag=None, types=TRANSACTION_TYPES, raw_user=raw_user)
        view.update(raw_at="", balance_at=None, this_month=self.this_month())
        if view["raw_user"]:
            try:
                state = HistoryState.from_query(query_lists(self.request.query_arguments))
            except BadState as exc:
                self.set_status(400)
                view["error"] = TEXT[self.lang][exc.key]
            else:
                await self._fill(state, view)
        self.render("console_user.html", **view)

    async def _fill(self, state: HistoryState, view: dict[str, Any]) -> None:
        view["state"] = state
        balance = await self.ctx.ledger.balance(state.user_id)
        if balance is None:
            self.set_status(404)
            view["error"] = TEXT[self.lang]["unknown_user"].format(user_id=state.user_id)
            return
        if self.principal is not None:  # always, after prepare(); recorded before anything is shown
            await self.audit.record(self.principal, self.route_name, state.user_id, self.origin.remote_ip)
        view["balance"] = tuple(format_kopecks(k) for k in balance)
        raw_at = form_value(self.request.query_arguments, "at")
        view["raw_at"] = raw_at
        if raw_at:
            try:
                view["balance_at"] = await balance_at_view(self.ctx.accounting, state.user_id, raw_at, self.lang)
            except UNAVAILABLE_ERRORS:
                view["balance_at"] = {"error": TEXT[self.lang]["store_down"]}
        names = await self.ctx.ledger.services()
        view["reservations"] = [
            {**render_reservation(r), "service_name": names.get(int(r["service_id"]))}
            for r in await self.ctx.ledger.user_reservations(state.user_id)
        ]
        try:
            lag = await self.ctx.projector.lag()
        except UNAVAILABLE_ERRORS:
            lag = None
        if lag and lag.get("entries"):
            view["lag"] = lag
        try:
            view["history"] = await self.ctx.history.page(state.user_id, state.api_query(self.zone), self.lang)
        except ApiError as exc:
            view["history_error"] = TEXT[self.lang]["history_error"].format(detail=exc.detail)
        except UNAVAILABLE_ERRORS:
            view["history_error"] = TEXT[self.lang]["store_down"]


class StatementHandler(ConsoleHandler):
    """A user's monthly statement: opening and closing balances, every type's sum, a CSV download."""

    roles = STATEMENTS
    route_name = "/console/statements"

    async def get(self) -> None:
        raw_user = form_value(self.request.query_arguments, "user")
        month = form_value(self.request.query_arguments, "month") or self.this_month()
        view: dict[str, Any] = {"raw_user": raw_user, "month": month, "error": None, "statement": None}
        view.update(types=TRANSACTION_TYPES, csv_url=None)
        if raw_user:
            user_id = parse_user(raw_user)
            if user_id is None:
                self.set_status(400)
                view["error"] = TEXT[self.lang]["bad_user_id"]
            elif not _is_month(month):
                self.set_status(400)
                view["error"] = TEXT[self.lang]["bad_month"]
            else:
                await self._fill(user_id, month, view)
        self.render("console_statement.html", **view)

    async def _fill(self, user_id: int, month: str, view: dict[str, Any]) -> None:
        try:
            statement = await self.ctx.accounting.statement(user_id, month)
        except ApiError as exc:
            self.set_status(exc.status)
            view["error"] = TEXT[self.lang]["unknown_user"].format(user_id=user_id) if exc.status == 404 else exc.detail
            return
        except UNAVAILABLE_ERRORS:
            self.set_status(503)
            view["error"] = TEXT[self.lang]["store_down"]
            return
        if self.principal is not None:
            await self.audit.record(self.principal, self.route_name, user_id, self.origin.remote_ip)
        view["statement"] = statement_view(statement, self.zone)
        view["csv_url"] = "/console/statements.csv?" + urlencode({"user": user_id, "month": statement.month.label})


class StatementCsvHandler(ConsoleHandler):
    """The statement's CSV (GET /v1/users/{id}/statements/{month} with Accept: text/csv) for a console session."""

    roles = STATEMENTS
    route_name = "/console/statements.csv"

    async def get(self) -> None:
        user_id = parse_user(form_value(self.request.query_arguments, "user"))
        month = form_value(self.request.query_arguments, "month")
        if user_id is None or not _is_month(month):
            raise ConsoleError(400, "bad_statement")
        chunks = self.ctx.accounting.statement_csv(user_id, month)
        try:
            first = await anext(chunks)
        except ApiError as exc:
            raise ConsoleError(exc.status, "unknown_user", user_id=user_id) from exc
        if self.principal is not None:
            await self.audit.record(self.principal, self.route_name, user_id, self.origin.remote_ip)
        self.set_header("Content-Type", "text/csv; charset=utf-8")
        self.set_header("Content-Disposition", f'attachment; filename="statement-{user_id}-{month}.csv"')
        self.write(first)
        async for chunk in chunks:
            self.write(chunk)
        self.finish()


class ReportsHandler(ConsoleHandler):
    """Accounting's monthly revenue: totals per service on the page and a signed CSV link."""

    roles = ACCOUNTING
    route_name = "/console/reports"

    async def get(self) -> None:
        month = form_value(self.request.query_arguments, "month") or self.this_month()
        view: dict[str, Any] = {"month": month, "error": None, "rows": None, "total": None, "link": None}
        if not _is_month(month):
            self.set_status(400)
            view["error"] = TEXT[self.lang]["bad_month"]
        else:
            try:
                totals = await self.ctx.reports.totals(month)
                view["link"] = self.ctx.reports.signed_link(month, self.origin.base_url)
            except ApiError as exc:
                self.set_status(exc.status)
                view["error"] = exc.detail
            except UNAVAILABLE_ERRORS:
                self.set_status(503)
                view["error"] = TEXT[self.lang]["store_down"]
            else:
                view["rows"] = [(name, format_kopecks(kopecks)) for name, kopecks in totals]
                view["total"] = format_kopecks(sum(kopecks for _, kopecks in totals))
        self.render("console_reports.html", **view)


def _is_month(text: str) -> bool:
    try:
        parse_month(text)
    except ParseError:
        return False
    return True


class AuditHandler(ConsoleHandler):
    """Admin's view of the audit log: newest first, filtered by who and by user id, paged by a cursor."""

    roles = ADMIN
    route_name = "/console/audit"

    async def get(self) -> None:
        args = self.request.query_arguments
        who = form_value(args, "who").strip()
        raw_user = form_value(args, "user").strip()
        before = form_value(args, "before").strip()
        view: dict[str, Any] = {"who": who, "raw_user": raw_user, "entries": None, "error": None}
        view.update(older=None, newest=None)
        user_id: int | None = None
        try:
            user_id = id_text(raw_user) if raw_user else None
        except ParseError:
            view["error"] = TEXT[self.lang]["bad_user_id"]
        if before and not STREAM_ID.fullmatch(before):
            view["error"] = TEXT[self.lang]["bad_cursor"]
        if view["error"]:
            self.set_status(400)
        else:
            entries, cursor = await self.audit.page(who or None, user_id, before or None)
            view["entries"] = entries
            view["older"] = self.url_with(before=cursor) if cursor else None
            view["newest"] = self.url_with(before="") if before else None
        self.render("console_audit.html", **view)


class ConsoleStaticHandler(OriginAware, tornado.web.StaticFileHandler):
    """The console's CSS, with the same security headers as its pages."""

    def set_default_headers(self) -> None:
        super().set_default_headers()
        for name, value in SECURITY_HEADERS.items():
            self.set_header(name, value)


def console_routes(ctx: ApiContext) -> list[Any]:
    args = {"ctx": ctx}
    return [
        (r"/console/?", HomeHandler, args),
        (r"/console/login", LoginHandler, args),
        (r"/console/logout", LogoutHandler, args),
        (r"/console/users", UserHandler, args),
        (r"/console/find", FindHandler, args),
        (r"/console/transactions", TransactionHandler, args),
        (r"/console/orders", OrderHandler, args),
        (r"/console/reports", ReportsHandler, args),
        (r"/console/statements", StatementHandler, args),
        (r"/console/statements\.csv", StatementCsvHandler, args),
        (r"/console/audit", AuditHandler, args),
        (r"/console/static/(.*)", ConsoleStaticHandler, {"path": str(STATIC_DIR)}),
    ]
