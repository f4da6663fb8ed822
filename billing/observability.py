"""Per-request observation: one JSON access-log line, request metrics, and the count of requests in flight."""

from __future__ import annotations

import logging
import os
import sys
from datetime import UTC, datetime
from typing import IO, TYPE_CHECKING, Any

import orjson

if TYPE_CHECKING:  # importing prometheus_client here would be too early for billing serve
    from billing.metrics import Metrics

access_log = logging.getLogger("billing.access")


class RequestObserver:
    """Installed as ctx.extras["on_request_started"/"on_request_finished"] by start_components."""

    def __init__(self, metrics: Metrics | None, log_requests: bool = True) -> None:
        self.metrics = metrics
        self.log_requests = log_requests
        self.in_flight = 0

    def started(self, handler: Any) -> None:
        self.in_flight += 1
        if self.metrics is not None:
            self.metrics.in_flight.inc()

    def finished(self, handler: Any) -> None:
        if self.in_flight > 0:
            self.in_flight -= 1
            if self.metrics is not None:
                self.metrics.in_flight.dec()
        request = handler.request
        status = handler.get_status()
        seconds = request.request_time()
        route = getattr(handler, "route_name", "") or "(unmatched)"
        if self.metrics is not None:
            self.metrics.observe_request(route, request.method or "", status, seconds)
        if self.log_requests and access_log.isEnabledFor(logging.INFO):
            access_log.info(access_line(handler, route, status, seconds))


def access_line(handler: Any, route: str, status: int, seconds: float) -> str:
    """The JSON access-log record: never the token, only the caller's token name."""
    request = handler.request
    principal = getattr(handler, "principal", None)
    record: dict[str, Any] = {
        "time": datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "method": request.method,
        "route": route,
        "path": request.path,
        "status": status,
        "duration_ms": round(seconds * 1000, 3),
        "request_id": getattr(handler, "request_id", "") or None,
        "token": principal.name if principal is not None else None,
        "remote_ip": request.remote_ip,
        "pid": os.getpid(),
    }
    code = getattr(handler, "error_code", None)
    if code:
        record["code"] = code
    return orjson.dumps(record).decode()


def configure_access_log(stream: IO[str] | None = None) -> None:
    """billing.access writes bare JSON lines (no prefix) so log shippers parse them as they are."""
    logger = logging.getLogger("billing.access")
    logger.handlers.clear()
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
