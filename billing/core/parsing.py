"""Strict parsers: the only place that turns outside text into values.

Bodies, paths, query strings, headers and console forms all come through here. A value is taken exactly as
written or refused: each grammar is matched with `fullmatch` against ASCII classes (`re.match` with `$`
would also accept a final "\\n"), nothing is stripped, and `int()`, `Decimal()` and `date()` only ever see
text a grammar has already accepted (on their own they skip surrounding whitespace and underscores and
read Arabic-Indic or full-width digits). Each parser raises ParseError with a message for the user;
callers name the field and turn it into their 400.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

from billing.core.errors import ApiError

INT64_MAX = 2**63 - 1  # Redis integers and MongoDB Int64 are signed 64-bit
MAX_ID = INT64_MAX
MAX_EXPIRES_IN = 31_536_000  # a reservation's expires_in: at most a year, in seconds
MAX_AMOUNT_STRING = 40  # longer amount strings are refused before any arithmetic
MAX_CURSOR_LENGTH = 512
FIRST_YEAR, LAST_YEAR = 1970, 2999  # report months

AMOUNT_GRAMMAR = r"([0-9]+)(?:\.([0-9]{1,2}))?"
_AMOUNT = re.compile(AMOUNT_GRAMMAR)
# An id in a path, query or form: ASCII digits; an integral form such as "42.0" is 42, as for ids in bodies.
_ID = re.compile(r"([0-9]{1,19})(?:\.0{1,20})?")
_SMALL_NUMBER = re.compile(r"[0-9]{1,3}")
_EPOCH_SECONDS = re.compile(r"[0-9]{1,12}")
_MONTH = re.compile(r"([0-9]{4})-([0-9]{2})")
_DATE = re.compile(r"([0-9]{4})-([0-9]{2})-([0-9]{2})")
# RFC 3339 section 5.6 date-time (a space may stand for "T", as its note allows).
_TIMESTAMP = re.compile(
    r"([0-9]{4})-([0-9]{2})-([0-9]{2})[Tt ]([0-9]{2}):([0-9]{2}):([0-9]{2})(\.[0-9]+)?([Zz]|[+-][0-9]{2}:[0-9]{2})"
)
_CURSOR = re.compile(r"([A-Za-z0-9_-]+)\.([A-Za-z0-9_-]+)")
_HEX_SHA256 = re.compile(r"[0-9a-f]{64}")
_VISIBLE_ASCII = re.compile(r"[!-~]+")
_FLAGS = {"1": True, "true": True, "0": False, "false": False}

# RFC 9110 section 12.4.2: qvalue = ( "0" [ "." 0*3DIGIT ] ) / ( "1" [ "." 0*3("0") ] )
_QVALUE = re.compile(r"0(?:\.[0-9]{0,3})?|1(?:\.0{0,3})?")
# RFC 9110 section 12.5.4: language-range [ OWS ";" OWS "q=" qvalue ]; the range is RFC 4647's.
_LANGUAGE_ELEMENT = re.compile(
    rf"(\*|[A-Za-z]{{1,8}}(?:-[A-Za-z0-9]{{1,8}})*)(?:[ \t]*;[ \t]*[Qq]=({_QVALUE.pattern}))?"
)
MAX_LANGUAGE_ELEMENTS = 20
# RFC 9110 sections 12.5.1 and 5.6.6: media-range *( OWS ";" OWS parameter ), parameter = token "=" value
_TOKEN = r"[!#$%&'*+.^_`|~0-9A-Za-z-]+"
_MEDIA_RANGE = re.compile(rf"({_TOKEN}/{_TOKEN})((?:[ \t]*;[ \t]*{_TOKEN}=(?:{_TOKEN}|\"(?:[^\"\\]|\\.)*\"))*)")
_MEDIA_PARAMETER = re.compile(rf"[ \t]*;[ \t]*({_TOKEN})=({_TOKEN}|\"(?:[^\"\\]|\\.)*\")")
MAX_ACCEPT_ELEMENTS = 20
_OWS = " \t"  # the only whitespace HTTP lists allow around their elements (RFC 9110 section 5.6.1)


class ParseError(ValueError):
    """The text is not exactly the grammar; the message says what it must be."""


def field_error(field: str, exc: ParseError) -> ApiError:
    """The API's 400 for a value that is not exactly its grammar."""
    return ApiError("validation_error", f"{field} {exc}", [{"field": field, "message": str(exc)}])


def _fullmatch(pattern: re.Pattern[str], text: object) -> re.Match[str] | None:
    return pattern.fullmatch(text) if isinstance(text, str) else None


# ---- numbers -----------------------------------------------------------------------------------------


def amount_kopecks(text: str) -> int:
    """A decimal amount string in rubles, `[0-9]+(.[0-9]{1,2})?`, to kopecks; the bounds are money's to check."""
    match = _AMOUNT.fullmatch(text) if len(text) <= MAX_AMOUNT_STRING else None
    if match is None:
        raise ParseError('must be a decimal string like "100.50": ASCII digits, optional 1-2 decimals')
    rubles, fraction = match.groups("")
    return int(rubles + fraction.ljust(2, "0"))  # the kopecks' digits: one int() (a batch parses one per operation)


def id_text(text: str) -> int:
    """An id in a path, query string or form: ASCII digits (an integral "42.0" too), 1 to 2^63-1."""
    match = _fullmatch(_ID, text)
    value = int(match.group(1)) if match else 0
    if not 1 <= value <= MAX_ID:
        raise ParseError("must be an integer from 1 to 2^63-1")
    return value


def json_integer(value: Any, largest: int, bounds: str) -> int:
    """An integer in a JSON body: an integer, or a number with an integral exact value (42.0, 4.2E+1), 1 to largest
    (at most 2^63-1); `bounds` names the range in the message. Strings ("42"), booleans and fractions are refused.
    """
    # Size first, without arithmetic: int() of 1E+999999999 would build a billion-digit number.
    if (
        isinstance(value, Decimal)
        and value.is_finite()
        and value.adjusted() <= 18
        and value == value.to_integral_value()
    ):
        value = int(value)
    if type(value) is not int or not 1 <= value <= largest:
        raise ParseError(f"must be an integer from {bounds}")
    return value


def json_id(value: Any) -> int:
    """An id in a JSON body (json_integer): 1 to 2^63-1."""
    return json_integer(value, MAX_ID, "1 to 2^63-1")


def json_expires_in(value: Any) -> int:
    """A reservation's expires_in in a JSON body (json_integer): 1 to MAX_EXPIRES_IN seconds."""
    return json_integer(value, MAX_EXPIRES_IN, f"1 to {MAX_EXPIRES_IN}")


def small_number(text: str, largest: int) -> int:
    """A count such as a page size: ASCII digits, 1 to largest (at most 999)."""
    value = int(text) if _fullmatch(_SMALL_NUMBER, text) else 0
    if not 1 <= value <= largest:
        raise ParseError(f"must be an integer from 1 to {largest}")
    return value


def whole_seconds(text: str, largest: int) -> int:
    """A duration such as a long poll's wait: ASCII digits, 0 to largest (at most 999)."""
    if not _fullmatch(_SMALL_NUMBER, text) or int(text) > largest:
        raise ParseError(f"must be whole seconds from 0 to {largest}")
    return int(text)


def epoch_seconds(text: str) -> int:
    """Seconds since 1970 as written in a signed link: 1 to 12 ASCII digits."""
    if not _fullmatch(_EPOCH_SECONDS, text):
        raise ParseError("must be epoch seconds, ASCII digits")
    return int(text)


# ---- dates and times ---------------------------------------------------------------------------------


def month(text: str) -> tuple[int, int]:
    """A report month "YYYY-MM", 1970-01 to 2999-12, as (year, month)."""
    match = _fullmatch(_MONTH, text)
    year, number = (int(match.group(1)), int(match.group(2))) if match else (0, 0)
    if not FIRST_YEAR <= year <= LAST_YEAR or not 1 <= number <= 12:
        raise ParseError(f"must be YYYY-MM, from {FIRST_YEAR}-01 to {LAST_YEAR}-12")
    return year, number


def calendar_date(text: str) -> date:
    """A day "YYYY-MM-DD" (only that form: not "20261101", not week dates)."""
    match = _fullmatch(_DATE, text)
    try:
        if match is None:
            raise ValueError
        return date(int(match.group(1)), int(match.group(2)), int(match.group(3)))
    except ValueError:
        raise ParseError("must be a date YYYY-MM-DD") from None


def timestamp(text: str) -> datetime:
    """An RFC 3339 timestamp with an explicit offset ("Z" or ±hh:mm), as an aware UTC datetime."""
    if _fullmatch(_TIMESTAMP, text) is None:
        raise ParseError("must be an RFC 3339 timestamp with an offset, like 2026-11-26T04:16:01.123Z")
    normalized = text[:-1] + "+00:00" if text[-1] in "Zz" else text
    try:
        return datetime.fromisoformat(normalized).astimezone(UTC)
    except OverflowError:
        raise ParseError("is out of the supported range of years") from None
    except ValueError:
        raise ParseError("is not a valid date and time") from None


# ---- words and tokens --------------------------------------------------------------------------------


def choice(text: str, options: Sequence[str]) -> str:
    """Exactly one of the options."""
    if not isinstance(text, str) or text not in options:
        raise ParseError(f"must be one of: {', '.join(options)}")
    return text


def id_list(text: str, at_most: int) -> list[int]:
    """1 to at_most comma-separated ids (each as id_text), no spaces, in the order given; repeats are kept."""
    # Longest possible text first, so a huge query is refused before it is split.
    if len(text) > at_most * (len("9" * 19 + ".") + 20 + 1):
        raise ParseError(f"must list 1 to {at_most} ids")
    parts = text.split(",")
    if len(parts) > at_most:
        raise ParseError(f"must list 1 to {at_most} ids")
    ids = []
    for index, part in enumerate(parts, 1):
        try:
            ids.append(id_text(part))
        except ParseError as exc:
            raise ParseError(f"id {index} of the comma-separated list {exc}") from None
    return ids


def choices(text: str, options: Sequence[str]) -> tuple[str, ...]:
    """A comma-separated list of options, no spaces; answered in the options' own order, without repeats."""
    wanted = text.split(",")
    unknown = [item for item in wanted if item not in options]
    if unknown:
        raise ParseError(f"unknown value {unknown[0]!r}; use a comma-separated list of: {', '.join(options)}")
    return tuple(option for option in options if option in wanted)


def flag(text: str) -> bool:
    """1, 0, true or false (ASCII letters in any case)."""
    if not text.isascii() or text.lower() not in _FLAGS:
        raise ParseError("must be 1 or 0")
    return _FLAGS[text.lower()]


def visible_ascii(value: str, longest: int) -> bool:
    """1..longest characters, each from "!" to "~" (printable ASCII without the space)."""
    return len(value) <= longest and _VISIBLE_ASCII.fullmatch(value) is not None


def idempotency_key(text: str) -> str:
    """An Idempotency-Key: 1-255 visible ASCII characters."""
    if not visible_ascii(text, 255):
        raise ParseError("must be 1-255 visible ASCII characters")
    return text


def cursor_parts(text: str, longest: int = MAX_CURSOR_LENGTH) -> tuple[str, str]:
    """A cursor `<payload>.<signature>`, both base64url without padding, at most `longest` characters."""
    match = _fullmatch(_CURSOR, text) if len(text) <= longest else None
    if match is None:
        raise ParseError("is malformed; use next_cursor exactly as returned")
    return match.group(1), match.group(2)


def hex_sha256(text: str) -> str:
    """An HMAC-SHA256 as 64 lowercase hex digits."""
    if not _fullmatch(_HEX_SHA256, text):
        raise ParseError("must be 64 lowercase hex digits")
    return text


# ---- query strings -----------------------------------------------------------------------------------


def query_value(arguments: Mapping[str, list[bytes]], name: str) -> str | None:
    """The one value of a query parameter exactly as sent (None when absent).

    Tornado's get_query_argument() strips whitespace and turns control characters into spaces; this reads
    the request's own query_arguments instead. Bytes that are not UTF-8 become U+FFFD, which no grammar
    here accepts. A parameter given twice is refused: which one would count is not obvious.
    """
    values = arguments.get(name)
    if values is None:
        return None
    if len(values) != 1:
        raise ParseError("give it once")
    return values[0].decode("utf-8", "replace")


def form_value(arguments: Mapping[str, list[bytes]], name: str) -> str:
    """A console form field exactly as sent: its last value, "" when absent."""
    values = arguments.get(name)
    return values[-1].decode("utf-8", "replace") if values else ""


def query_lists(arguments: Mapping[str, list[bytes]]) -> dict[str, list[str]]:
    """Every query parameter with all its values exactly as sent (for pages that allow repeats)."""
    return {name: [value.decode("utf-8", "replace") for value in values] for name, values in arguments.items()}


# ---- headers -----------------------------------------------------------------------------------------


def accept_language(header: str | None, supported: Sequence[str], default: str) -> str:
    """The best supported language for an Accept-Language header (RFC 9110 section 12.5.4).

    A range matches a language by its primary subtag ("en-GB" is en), "*" matches every language the
    header does not name, and q=0 means "not acceptable". The highest q above 0 wins, the earlier range
    among equals. A malformed element (bad tag, q="2", q=" 1", unknown parameter) is ignored as a whole.
    With nothing acceptable: the first supported language not refused outright, else the default.
    """
    if not header:
        return default
    quality: dict[str, tuple[int, int]] = {}  # language -> (q in thousandths, position)
    wildcard: tuple[int, int] | None = None
    for position, element in enumerate(header.split(",")[:MAX_LANGUAGE_ELEMENTS]):
        match = _LANGUAGE_ELEMENT.fullmatch(element.strip(_OWS))
        if match is None:
            continue
        language_range, raw_q = match.group(1), match.group(2)
        q = _thousandths(raw_q) if raw_q is not None else 1000
        if language_range == "*":
            wildcard = wildcard or (q, position)
            continue
        primary = language_range.split("-", 1)[0].lower()
        if primary in supported and (primary not in quality or q > quality[primary][0]):
            quality[primary] = (q, position)
    if wildcard is not None:
        for language in supported:
            quality.setdefault(language, wildcard)
    acceptable = [(-q, position, language) for language, (q, position) in quality.items() if q > 0]
    if acceptable:
        return min(acceptable)[2]
    for language in (default, *supported):
        if language not in quality:  # not named, not refused
            return language
    return default


def qvalue(text: str) -> int:
    """An HTTP weight's qvalue (RFC 9110 section 12.4.2) in thousandths: "0" to "1" with at most three decimals,
    nothing else ("1.0000", "0.5e1", "nan", "inf", "-0", " 1" are refused)."""
    if not _fullmatch(_QVALUE, text):
        raise ParseError("must be a qvalue: 0 to 1 with at most 3 decimals")
    return _thousandths(text)


def accept_media(header: str | None) -> list[tuple[str, int]]:
    """An Accept header's media ranges (lowercase) with their weights in thousandths (1000 without a q), in
    the header's order. A malformed element (a bad range, parameter or qvalue) is left out as a whole."""
    out: list[tuple[str, int]] = []
    for element in (header or "").split(",")[:MAX_ACCEPT_ELEMENTS]:
        match = _fullmatch(_MEDIA_RANGE, element.strip(_OWS))
        if match is None:
            continue
        weights = [value for name, value in _MEDIA_PARAMETER.findall(match.group(2)) if name.lower() == "q"]
        try:
            weight = qvalue(weights[0]) if weights else 1000
        except ParseError:
            continue
        out.append((match.group(1).lower(), weight))
    return out


def _thousandths(qvalue: str) -> int:
    whole, _, fraction = qvalue.partition(".")
    return int(whole) * 1000 + int(fraction.ljust(3, "0"))
