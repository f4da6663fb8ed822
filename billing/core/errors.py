"""Problem details (RFC 9457): every error code the API can answer, its status and title."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

PROBLEM_CONTENT_TYPE = "application/problem+json"

# code -> (HTTP status, title). The stable, machine-readable list clients switch on.
PROBLEMS: dict[str, tuple[int, str]] = {
    "invalid_json": (400, "Body is not valid JSON"),
    "validation_error": (400, "Request is not valid"),
    "invalid_cursor": (400, "Cursor is not valid for this query"),
    "webhook_url_not_allowed": (400, "Webhook URL points at a loopback, private or link-local address"),
    "unauthenticated": (401, "Authentication required"),
    "forbidden": (403, "Token lacks the role for this operation"),
    "invalid_signature": (403, "Link signature is invalid or expired"),
    "not_found": (404, "No such route"),
    "account_not_found": (404, "Account not found"),
    "reservation_not_found": (404, "Reservation not found"),
    "webhook_not_found": (404, "Webhook not found"),
    "method_not_allowed": (405, "Method not allowed"),
    "insufficient_funds": (409, "Insufficient funds"),
    "balance_limit_exceeded": (409, "Balance limit exceeded"),
    "reservation_conflict": (409, "Reservation exists with another amount"),
    "amount_exceeds_reservation": (409, "Amount exceeds the reservation"),
    "reservation_closed": (409, "Reservation is closed"),
    "reservation_not_recognized": (409, "Reservation is not recognized"),
    "refund_exceeds_charge": (409, "Refunds would exceed the recognized charge"),
    "reservation_expired": (409, "Reservation has expired"),
    "idempotency_key_in_use": (409, "A request with this Idempotency-Key is in progress"),
    "payload_too_large": (413, "Payload too large"),
    "unsupported_media_type": (415, "Content-Type must be application/json"),
    "idempotency_key_reused": (422, "Idempotency-Key was used for another request"),
    "internal_error": (500, "Internal error"),
    "unavailable": (503, "Service temporarily unavailable"),
}


@dataclass
class ApiError(Exception):
    """An error answered as problem+json; raise it anywhere below a handler."""

    code: str
    detail: str = ""
    errors: list[dict[str, str]] = field(default_factory=list)
    headers: dict[str, str] = field(default_factory=dict)

    @property
    def status(self) -> int:
        return PROBLEMS[self.code][0]

    def to_problem(self) -> dict[str, Any]:
        return problem_body(self.code, self.detail, self.errors)


def problem_body(code: str, detail: str = "", errors: list[dict[str, str]] | None = None) -> dict[str, Any]:
    status, title = PROBLEMS[code]
    body: dict[str, Any] = {
        "type": f"urn:problem-type:billing:{code}",
        "title": title,
        "status": status,
        "detail": detail or title,
        "code": code,
    }
    if errors:
        body["errors"] = errors
    return body


def validation_errors(exc: Any) -> list[dict[str, str]]:
    """pydantic ValidationError -> [{"field", "message"}] with dotted field paths."""
    out = []
    for err in exc.errors(include_url=False, include_input=False):
        loc = ".".join(str(part) for part in err.get("loc", ()) if part != "function-after")
        message = err.get("msg", "invalid")
        ctx = err.get("ctx") or {}
        if "error" in ctx and isinstance(ctx["error"], Exception):
            message = str(ctx["error"])
        out.append({"field": loc or "body", "message": message})
    return out
