"""Pydantic models: what every request must look like and what every response looks like.

Request models validate input; response models document output (OpenAPI) and are checked by tests.
"""

from __future__ import annotations

import unicodedata
from decimal import Decimal
from typing import Annotated, Any, ClassVar, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainValidator,
    WithJsonSchema,
    model_validator,
)

from billing.money import MAX_AMOUNT_STRING, PUBLISHED_AMOUNT_PATTERN, parse_amount

MAX_ID = 2**63 - 1


def _integral_number(value: Any) -> Any:
    """A JSON number with an integral exact value (42.0, 4.2E+1) is that integer, as JSON Schema reads it."""
    # Size first, without arithmetic: int() of 1E+999999999 would build a billion-digit number.
    if (
        isinstance(value, Decimal)
        and value.is_finite()
        and value.adjusted() <= 18
        and value == value.to_integral_value()
    ):
        return int(value)
    return value


Id = Annotated[int, Field(strict=True, ge=1, le=MAX_ID, examples=[42]), BeforeValidator(_integral_number)]

Amount = Annotated[
    int,
    PlainValidator(parse_amount),
    WithJsonSchema(
        {
            "description": 'Rubles: a decimal string like "100.50" or a JSON number with at most 2 decimals;'
            " > 0 and <= 1000000000.00.",
            "anyOf": [
                {"type": "string", "pattern": PUBLISHED_AMOUNT_PATTERN, "maxLength": MAX_AMOUNT_STRING},
                {"type": "number", "exclusiveMinimum": 0, "maximum": 1_000_000_000, "multipleOf": 0.01},
            ],
            "examples": ["100.50"],
        }
    ),
]

Money = Annotated[str, Field(pattern=r"^-?[0-9]+\.[0-9]{2}$", examples=["100.50"])]
Timestamp = Annotated[str, Field(description="RFC 3339 UTC with milliseconds", examples=["2026-11-26T04:16:01.123Z"])]


def _printable_text(value: str) -> str:
    for char in value:
        category = unicodedata.category(char)
        if category == "Cc" or category == "Cs":
            raise ValueError("must not contain control characters or lone surrogates")
    return value


def _blank_to_none(value: str | None) -> str | None:
    return value if value else None


# For the spec only (the validator above is the check): no C0/C1 control characters.
PRINTABLE_TEXT = {"pattern": "^[^\\u0000-\\u001f\\u007f-\\u009f]*$"}

Comment = Annotated[
    str | None,
    Field(
        max_length=500,
        description="Free text shown in the user's history; empty means none",
        json_schema_extra=PRINTABLE_TEXT,
    ),
    AfterValidator(lambda v: _printable_text(v) if v else v),
    AfterValidator(_blank_to_none),
]
ServiceName = Annotated[
    str, Field(min_length=1, max_length=200, json_schema_extra=PRINTABLE_TEXT), AfterValidator(_printable_text)
]


class Request(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


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


class RecognizeRequest(ReservationRef):
    amount: Amount


class CancelRequest(ReservationRef):
    comment: Comment = None


class ServiceNameRequest(Request):
    name: ServiceName


# ---- responses -------------------------------------------------------------------------------

TransactionType = Literal["deposit", "withdrawal", "transfer_in", "transfer_out", "reserve", "charge", "release"]
TRANSACTION_TYPES: tuple[str, ...] = TransactionType.__args__  # type: ignore[attr-defined]


class Balance(BaseModel):
    user_id: int
    available: Money
    reserved: Money


class Transaction(BaseModel):
    id: int
    type: TransactionType
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
    status: Literal["reserved", "recognized", "cancelled"]
    recognized_amount: Money | None
    created_at: Timestamp
    updated_at: Timestamp


class ReservationResult(BaseModel):
    reservation: Reservation
    balance: Balance
    transaction: Transaction | None = None
    release_transaction: Transaction | None = None


class Service(BaseModel):
    service_id: int
    name: str


class ServiceList(BaseModel):
    items: list[Service]


class HistoryPage(BaseModel):
    items: list[Transaction]
    next_cursor: str | None


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
