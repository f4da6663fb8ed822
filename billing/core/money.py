"""Money: request amounts to integer kopecks and kopecks back to "100.50". The only converter."""

from __future__ import annotations

from decimal import Decimal

from billing.core.parsing import ParseError, amount_kopecks

KOPECKS_PER_RUBLE = 100
MAX_OPERATION_KOPECKS = 1_000_000_000 * KOPECKS_PER_RUBLE
MAX_BALANCE_KOPECKS = 10_000_000_000_000 * KOPECKS_PER_RUBLE
# What the OpenAPI spec publishes: exactly the strings parse_amount accepts (> 0, <= 1000000000.00,
# at most parsing.MAX_AMOUNT_STRING characters); tests/unit/test_published_schemas.py holds the two together.
PUBLISHED_AMOUNT_PATTERN = r"^(0*([1-9][0-9]{0,8}(\.[0-9]{1,2})?|1000000000(\.0{1,2})?)|0+\.(0[1-9]|[1-9][0-9]?))$"
_MAX_OPERATION_RUBLES = Decimal(MAX_OPERATION_KOPECKS) / KOPECKS_PER_RUBLE
MAX_OPERATION_TEXT = f"{_MAX_OPERATION_RUBLES:.2f}"  # "1000000000.00"
_TOO_LARGE = f"must not exceed {MAX_OPERATION_TEXT}"


class AmountError(ValueError):
    """The amount is not a valid money amount; the message says why."""


def parse_amount(value: object) -> int:
    """Turn a request amount (decimal string, int or exact Decimal) into kopecks, within bounds."""
    if isinstance(value, str):
        try:
            kopecks = amount_kopecks(value)
        except ParseError as exc:
            raise AmountError(str(exc)) from None
    elif isinstance(value, bool):
        raise AmountError("must be a decimal string or a number, not a boolean")
    elif isinstance(value, int):
        if value > _MAX_OPERATION_RUBLES:
            raise AmountError(_TOO_LARGE)
        kopecks = value * KOPECKS_PER_RUBLE
    elif isinstance(value, Decimal):
        kopecks = _decimal_to_kopecks(value)
    else:
        raise AmountError('must be a decimal string like "100.50" or a JSON number')
    if kopecks <= 0:
        raise AmountError("must be greater than 0")
    if kopecks > MAX_OPERATION_KOPECKS:
        raise AmountError(_TOO_LARGE)
    return kopecks


def _decimal_to_kopecks(value: Decimal) -> int:
    """Exact, whatever the digits: works on the number's own digits, never through a rounding context."""
    if not value.is_finite():
        raise AmountError("must be a finite number")
    if value <= 0:
        raise AmountError("must be greater than 0")
    if value > _MAX_OPERATION_RUBLES:
        raise AmountError(_TOO_LARGE)
    _, digits, exponent = value.as_tuple()
    assert isinstance(exponent, int)
    significant = "".join(map(str, digits)).rstrip("0")
    exponent += len(digits) - len(significant)  # the trailing zeros dropped above
    if exponent < -2:
        raise AmountError("must have at most 2 decimal places")
    kopecks: int = int(significant) * 10 ** (exponent + 2)  # few digits: 0 < value <= 1e9 and exponent >= -2
    return kopecks


def format_kopecks(kopecks: int) -> str:
    """Kopecks to the API's money string with exactly two fractional digits."""
    if kopecks >= KOPECKS_PER_RUBLE:
        digits = str(kopecks)  # the digits themselves: cheaper than divmod and a format (a batch calls this 6x per op)
        return digits[:-2] + "." + digits[-2:]
    if kopecks == 0:  # every reserved_after of an account that holds no reservation
        return "0.00"
    if kopecks > 0:
        return f"0.{kopecks:02d}"
    return "-" + format_kopecks(-kopecks)
