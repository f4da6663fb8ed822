"""Pydantic models: what every request must look like and what every response looks like.

Request models validate input; response models document output (OpenAPI) and are checked by tests.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, ClassVar, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PlainValidator,
    WithJsonSchema,
    model_validator,
)
from pydantic.json_schema import SkipJsonSchema

from billing.core.money import (
    KOPECKS_PER_RUBLE,
    MAX_OPERATION_KOPECKS,
    MAX_OPERATION_TEXT,
    PUBLISHED_AMOUNT_PATTERN,
    parse_amount,
)
from billing.core.parsing import MAX_AMOUNT_STRING, MAX_EXPIRES_IN, MAX_ID, json_expires_in, json_id
from billing.core.transactions import TRANSACTION_TYPES

# Ids in bodies: JSON integers (or integral numbers such as 42.0, as JSON Schema reads them), never strings.
Id = Annotated[
    int,
    PlainValidator(json_id),
    WithJsonSchema({"type": "integer", "minimum": 1, "maximum": MAX_ID, "examples": [42]}),
]

# A reservation's lifetime: a JSON integer of seconds (integral numbers such as 10.0 count, as for ids).
ExpiresIn = Annotated[
    int,
    PlainValidator(json_expires_in),
    WithJsonSchema(
        {
            "type": "integer",
            "minimum": 1,
            "maximum": MAX_EXPIRES_IN,
            "description": "Seconds until the reservation expires (released to available); absent or null: "
            "BILLING_RESERVATION_TTL_SECONDS",
            "examples": [3600],
        }
    ),
]

Amount = Annotated[
    int,
    PlainValidator(parse_amount),
    WithJsonSchema(
        {
            "description": 'Rubles: a decimal string like "100.50" or a JSON number with at most 2 decimals;'
            f" > 0 and <= {MAX_OPERATION_TEXT}.",
            "anyOf": [
                {"type": "string", "pattern": PUBLISHED_AMOUNT_PATTERN, "maxLength": MAX_AMOUNT_STRING},
                {
                    "type": "number",
                    "exclusiveMinimum": 0,
                    "maximum": MAX_OPERATION_KOPECKS // KOPECKS_PER_RUBLE,
                    "multipleOf": 0.01,
                },
            ],
            "examples": ["100.50"],
        }
    ),
]

Money = Annotated[str, Field(pattern=r"^-?[0-9]+\.[0-9]{2}$", examples=["100.50"])]
Timestamp = Annotated[str, Field(description="RFC 3339 UTC with milliseconds", examples=["2026-11-26T04:16:01.123Z"])]


# Exactly the code points of Unicode categories Cc (C0, DEL, C1) and Cs (surrogates): both are fixed sets.
_CONTROL_OR_SURROGATE = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff]")


def _printable_text(value: str) -> str:
    # isprintable() is False for every Cc and Cs character (and for some allowed ones, e.g. U+2028),
    # so a True answer settles the usual case in one C call; otherwise the exact set decides.
    if not value.isprintable() and _CONTROL_OR_SURROGATE.search(value):
        raise ValueError("must not contain control characters or lone surrogates")
    return value


def _comment(value: str | None) -> str | None:
    """Control characters and lone surrogates refused; empty means none."""
    return _printable_text(value) if value else None


# For the spec only (the validator above is the check): no C0/C1 control characters.
PRINTABLE_TEXT = {"pattern": "^[^\\u0000-\\u001f\\u007f-\\u009f]*$"}

Comment = Annotated[
    str | None,
    Field(
        max_length=500,
        description="Free text shown in the user's history; empty means none",
        json_schema_extra=PRINTABLE_TEXT,
    ),
    AfterValidator(_comment),
]
ServiceName = Annotated[
    str, Field(min_length=1, max_length=200, json_schema_extra=PRINTABLE_TEXT), AfterValidator(_printable_text)
]


class Request(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    # Fields added after v1 that stay out of a request's idempotency fingerprint while absent (None), so that a
    # request written as before keeps the fingerprint its records were made with (billing/ledger/service.py).
    LATER_FIELDS: ClassVar[tuple[str, ...]] = ()


class DepositRequest(Request):
    user_id: Id
    amount: Amount
    comment: Comment = None


class WithdrawalRequest(DepositRequest):
    pass


class TransferRequest(Request):
    from_user_id: Id
    to_user_id: Id
    amount: Amount
    comment: Comment = None

    @model_validator(mode="after")
    def _distinct_users(self) -> TransferRequest:
        if self.from_user_id == self.to_user_id:
            raise ValueError("from_user_id and to_user_id must differ")
        return self


class ReservationRef(Request):
    user_id: Id
    service_id: Id
    order_id: Id


class ReserveRequest(ReservationRef):
    amount: Amount
    service_name: ServiceName | None = None
    comment: Comment = None
    expires_in: ExpiresIn | None = None

    LATER_FIELDS: ClassVar[tuple[str, ...]] = ("expires_in",)


class RecognizeRequest(ReservationRef):
    amount: Amount


class CancelRequest(ReservationRef):
    comment: Comment = None


class RefundRequest(ReservationRef):
    amount: Amount
    comment: Comment = None


class ServiceNameRequest(Request):
    name: ServiceName


# ---- responses -------------------------------------------------------------------------------


# A TransactionType's value, published inline as the list of values.
TransactionTypeValue = Annotated[str, WithJsonSchema({"type": "string", "enum": list(TRANSACTION_TYPES)})]


class Balance(BaseModel):
    user_id: int
    available: Money
    reserved: Money


def _absent_not_null(schema: dict[str, Any]) -> None:
    """An optional field that is left out, never null: no `default: null` in the published schema."""
    schema.pop("default", None)


class BalanceMaybeAt(Balance):
    """A balance; read with `at`, also the moment it is the balance at."""

    as_of: Annotated[
        Timestamp | SkipJsonSchema[None],
        Field(
            description="Only with `at`: `at` in UTC, to the millisecond (the ledger's precision)",
            json_schema_extra=_absent_not_null,
        ),
    ] = None


class BalanceAmounts(BaseModel):
    available: Money
    reserved: Money


class Statement(BaseModel):
    """One user's month in BILLING_REPORT_TZ: opening + movements (each type by its effect) = closing."""

    user_id: int
    month: Annotated[str, Field(examples=["2026-11"])]
    opening: BalanceAmounts
    closing: BalanceAmounts
    totals: Annotated[
        dict[TransactionTypeValue, Money], Field(description="The sum of each transaction type's amounts, every type")
    ]
    count: Annotated[int, Field(description="The month's transactions")]


class MissingBalance(BaseModel):
    """An item of a many-balances read for a user with no account."""

    user_id: int
    error: Literal["account_not_found"]


class BalanceList(BaseModel):
    items: list[Balance | MissingBalance]


class Transaction(BaseModel):
    id: int
    type: TransactionTypeValue
    amount: Money
    available_after: Money
    reserved_after: Money
    created_at: Timestamp
    comment: str | None
    description: str
    service_id: int | None = None
    service_name: str | None = None
    order_id: int | None = None
    counterparty_user_id: int | None = None
    reason: Annotated[
        Literal["expired"] | None,
        Field(description="Only on a release of a reservation that expired"),
    ] = None


class MoneyMovement(BaseModel):
    balance: Balance
    transaction: Transaction


class TransferResult(MoneyMovement):
    recipient_balance: Balance
    recipient_transaction: Transaction


class Reservation(BaseModel):
    user_id: int
    service_id: int
    order_id: int
    amount: Money
    status: Literal["reserved", "recognized", "cancelled", "expired"]
    recognized_amount: Money | None
    refunded_amount: Annotated[Money, Field(description="The sum of the refunds of the charge; 0.00 until one")]
    created_at: Timestamp
    updated_at: Timestamp
    expires_at: Annotated[
        Timestamp | None,
        Field(
            description="When a reservation still reserved is released (status expired); null only for one made "
            "before reservations expired"
        ),
    ]


class ReservationResult(BaseModel):
    reservation: Reservation
    balance: Balance
    transaction: Transaction | None = None
    release_transaction: Transaction | None = None


class RefundResult(BaseModel):
    reservation: Reservation
    balance: Balance
    transaction: Transaction


class Service(BaseModel):
    service_id: int
    name: str


class ServiceList(BaseModel):
    items: list[Service]


class HistoryItem(Transaction):
    # The transaction's place in its user's hash chain (hex SHA-256; docs/api.md "Tamper evidence")
    hash: str | None


class HistoryPage(BaseModel):
    items: list[HistoryItem]
    next_cursor: str | None


class EventData(HistoryItem):
    user_id: int


class Event(BaseModel):
    id: int
    type: Literal["transaction.created"]
    created_at: Timestamp
    data: EventData


class EventPage(BaseModel):
    items: list[Event]
    next: str


# ---- webhooks --------------------------------------------------------------------------------

WEBHOOK_NAME_PATTERN = "^[A-Za-z0-9_-]{1,64}$"
MAX_WEBHOOK_URL = 2048
# http(s)://host[:port][/path?query#fragment]: a name or IPv4 address, or an IPv6 one in brackets; no user
# name or password; visible ASCII only.
WEBHOOK_URL_PATTERN = "^https?://(\\[[0-9A-Fa-f:.]+\\]|[A-Za-z0-9.-]+)(:[0-9]{1,5})?([/?#][!-~]*)?$"
_WEBHOOK_URL = re.compile(WEBHOOK_URL_PATTERN)


def _webhook_url(value: str) -> str:
    """An absolute http or https URL with a host; where its host points is checked when it is stored."""
    from urllib.parse import urlsplit

    if not _WEBHOOK_URL.fullmatch(value):
        raise ValueError(
            "must be http(s)://host[:port][/path], visible ASCII (percent-encode anything else), "
            "without a user name or password"
        )
    try:
        parts = urlsplit(value)
        port = parts.port
    except ValueError as exc:
        raise ValueError(f"is not a URL: {exc}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("must be an http:// or https:// URL with a host")
    if parts.username is not None or parts.password is not None:
        raise ValueError("must not carry a user name or password")
    if port == 0:
        raise ValueError("port must be 1 .. 65535")
    return value


def _distinct(values: list[str]) -> list[str]:
    unknown = sorted(set(values) - set(TRANSACTION_TYPES))
    if unknown:
        raise ValueError(f"unknown transaction types {unknown}; types are {', '.join(TRANSACTION_TYPES)}")
    return list(dict.fromkeys(values))


WebhookUrl = Annotated[
    str,
    Field(
        min_length=1,
        max_length=MAX_WEBHOOK_URL,
        pattern=WEBHOOK_URL_PATTERN,
        description="Where deliveries are POSTed: http or https, resolving to a public address",
        examples=["https://orders.example.com/billing-events"],
    ),
    AfterValidator(_webhook_url),
]
WebhookTypes = Annotated[
    list[TransactionTypeValue],
    Field(
        min_length=1,
        description="Transaction types (the events' data.type) to deliver; absent or null: every event",
        examples=[["deposit", "charge"]],
    ),
    AfterValidator(_distinct),
]


class WebhookRequest(Request):
    url: WebhookUrl
    types: WebhookTypes | None = None


class WebhookItem(BaseModel):
    name: str = Field(pattern=WEBHOOK_NAME_PATTERN)
    url: str
    types: list[TransactionTypeValue] | None
    created_at: Timestamp


class Webhook(WebhookItem):
    secret: str | None = Field(
        description="The HMAC key of the Billing-Signature header; given when the webhook is created, null when "
        "a PUT updates an existing one (the secret stays)"
    )


class WebhookList(BaseModel):
    items: list[WebhookItem]


class WebhookStatus(WebhookItem):
    delivered_through: str = Field(
        description="The feed cursor up to which events are delivered (GET /v1/events?after=)"
    )
    pending: int = Field(description="Feed events after delivered_through, the types filter not applied")
    attempts: int = Field(description="Failed attempts of the batch in flight")
    last_error: str | None
    last_attempt_at: Timestamp | None
    last_success_at: Timestamp | None
    next_attempt_at: Timestamp | None = Field(description="When the failed batch in flight is tried again")


class ReportLink(BaseModel):
    month: str
    url: str
    expires_at: Timestamp


class FieldError(BaseModel):
    field: str
    message: str


class Problem(BaseModel):
    type: str
    title: str
    status: int
    detail: str
    code: str
    errors: list[FieldError] | None = None


class Health(BaseModel):
    status: str
    checks: dict[str, Any] = {}


# ---- batch -----------------------------------------------------------------------------------

BATCH_OPERATIONS: dict[str, type[Request]] = {
    "deposit": DepositRequest,
    "withdrawal": WithdrawalRequest,
    "transfer": TransferRequest,
    "reserve": ReserveRequest,
    "recognize": RecognizeRequest,
    "cancel": CancelRequest,
    "refund": RefundRequest,
}


class BatchRequest(Request):
    MAX_OPERATIONS: ClassVar[int] = 1000
    operations: list[dict[str, Any]] = Field(
        min_length=1,
        max_length=MAX_OPERATIONS,
        description="Each: {op, idempotency_key?, ...the fields of the op's endpoint}",
    )


class BatchResult(BaseModel):
    status: int
    body: dict[str, Any]


class BatchResponse(BaseModel):
    results: list[BatchResult]
