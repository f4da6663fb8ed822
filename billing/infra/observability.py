"""Per-request observation: one JSON access-log line, request metrics, and the count of requests in flight."""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import time
from typing import IO, TYPE_CHECKING, Any

import orjson

from billing.core.timefmt import format_ms

if TYPE_CHECKING:  # importing prometheus_client here would be too early for billing serve
    from billing.infra.metrics import Metrics

access_log = logging.getLogger("billing.access")


class _Pid:
    """os.getpid() is a system call; the pid changes only at a fork."""

    value = os.getpid()

    @classmethod
    def refresh(cls) -> None:
        cls.value = os.getpid()


os.register_at_fork(after_in_child=_Pid.refresh)


class RequestObserver:
    """Every handler calls started() as a request begins, then finished() or abandoned() (billing/bootstrap.py
    builds one per process).

    Only a request counted by started() is uncounted, once, by finished() or abandoned(): one refused before
    it started (Tornado's 405 for an invented method) or ended twice cannot move another request's count.
    """

    def __init__(self, metrics: Metrics | None, log_requests: bool = True) -> None:
        self.metrics = metrics
        self.log_requests = log_requests
        self.in_flight = 0

    def started(self, handler: Any) -> None:
        handler.counted_in_flight = True
        self.in_flight += 1
        if self.metrics is not None:
            self.metrics.set_in_flight(self.in_flight)

    def _uncount(self, handler: Any) -> None:
        if getattr(handler, "counted_in_flight", False):
            handler.counted_in_flight = False
            self.in_flight -= 1
            if self.metrics is not None:
                self.metrics.set_in_flight(self.in_flight)

    def abandoned(self, handler: Any) -> None:
        """The client closed the connection before the answer was finished (no status to count or log)."""
        self._uncount(handler)

    def finished(self, handler: Any) -> None:
        self._uncount(handler)
        request = handler.request
        status = handler.get_status()
        seconds = request.request_time()
        route = getattr(handler, "route_name", "") or "(unmatched)"
        if self.metrics is not None:
            self.metrics.observe_request(route, request.method or "", status, seconds)
        if self.log_requests and access_log.isEnabledFor(logging.INFO):
            line = access_line(handler, route, status, seconds)
            handlers = access_log.handlers
            if len(handlers) == 1 and type(handlers[0]) is AccessLineHandler and not access_log.disabled:
                handlers[0].write_line(line)  # the usual case: no LogRecord, one write
            else:  # some other logging set-up (tests, embedding): go through logging as any record would
                access_log.info(line.rstrip("\n"))


def access_line(handler: Any, route: str, status: int, seconds: float) -> str:
    """The JSON access-log record, newline-terminated: never the token, only the caller's token name."""
    request = handler.request
    principal = getattr(handler, "principal", None)
    origin = getattr(handler, "origin", None)  # X-Forwarded-For believed from trusted proxies only
    record: dict[str, Any] = {
        "time": format_ms(time.time_ns() // 1_000_000),
        "method": request.method,
        "route": route,
        "path": request.path,
        "status": status,
        "duration_ms": round(seconds * 1000, 3),
        "request_id": getattr(handler, "request_id", "") or None,
        "token": principal.name if principal is not None else None,
        "remote_ip": origin.remote_ip if origin is not None else request.remote_ip,
        "pid": _Pid.value,
    }
    code = getattr(handler, "error_code", None)
    if code:
        record["code"] = code
    return orjson.dumps(record, option=orjson.OPT_APPEND_NEWLINE).decode()


# Gathered lines and metric updates are written this long after the first of them at the latest: one write
# for all requests of the interval, instead of one (and an extra event-loop iteration) per request when
# requests come one at a time.
WRITE_EVERY_SECONDS = 0.05
LINES_AT_MOST = 256  # a fuller buffer is written at once


class AccessLineHandler(logging.StreamHandler):  # type: ignore[type-arg]  # (generic only in typeshed)
    """billing.access's handler: a record's bare message; RequestObserver hands it finished lines instead.

    Lines are gathered and written together WRITE_EVERY_SECONDS after the first (one write system call for
    all requests that finished meanwhile), in order, before any record emitted the usual way and at
    flush/close (the worker flushes before it exits).
    """

    terminator = "\n"

    def __init__(self, stream: IO[str]) -> None:
        super().__init__(stream)
        self.setFormatter(logging.Formatter("%(message)s"))
        self._lines: list[str] = []

    def write_line(self, line: str) -> None:
        """Queue one finished line (with its newline): no LogRecord, no formatting."""
        self._lines.append(line)
        if len(self._lines) == 1:
            try:
                asyncio.get_running_loop().call_later(WRITE_EVERY_SECONDS, self.write_lines)
            except RuntimeError:  # no event loop here: write at once
                self.write_lines()
        elif len(self._lines) >= LINES_AT_MOST:
            self.write_lines()  # the timer still pending finds nothing (or the next lines) to write

    def write_lines(self) -> None:
        lines, self._lines = self._lines, []
        if not lines:
            return
        try:
            self.stream.write("".join(lines))
            super().flush()
        except Exception:  # as logging does: a broken log stream never fails a request
            self.handleError(logging.makeLogRecord({"msg": lines[0]}))

    def emit(self, record: logging.LogRecord) -> None:
        self.write_lines()
        super().emit(record)

    def flush(self) -> None:
        self.write_lines()
        super().flush()


def configure_access_log(stream: IO[str] | None = None) -> None:
    """billing.access writes bare JSON lines (no prefix) so log shippers parse them as they are."""
    logger = logging.getLogger("billing.access")
    logger.handlers.clear()
    logger.addHandler(AccessLineHandler(stream or sys.stderr))
    logger.setLevel(logging.INFO)
    logger.propagate = False
