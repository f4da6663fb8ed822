"""billing/core/parsing.py: every parser takes its grammar exactly or refuses, and what it takes round-trips.

For each parser: (1) strings built from a hostile alphabet (whitespace, newlines, Unicode and full-width
digits, superscripts, signs) are accepted exactly when an independent description of the grammar says so;
(2) any valid string with junk before or after it, or with one ASCII digit swapped for a look-alike, is
refused; (3) an accepted string and the canonical spelling of its value parse to the same value.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import date, datetime, timedelta
from decimal import Context, Decimal
from typing import Any

import pytest
from hypothesis import assume, example, given
from hypothesis import strategies as st

from billing.api.openapi import build_spec
from billing.core import parsing
from billing.core.money import AmountError, format_kopecks, parse_amount
from billing.core.parsing import AMOUNT_GRAMMAR, ParseError
from billing.core.transactions import TRANSACTION_TYPES
from billing.views.accounting import wants_csv
from billing.views.descriptions import negotiate_language
from billing.views.events import MAX_EVENT_CURSOR_LENGTH

ASCII_DIGITS = "0123456789"
WHITESPACE = [" ", "\t", "\n", "\r", "\x0b", "\x0c", "\x1c", "\x85", "\xa0", "\u2003", "\u2028", "\u3000", "\ufeff"]
# Characters int(), Decimal() or str.isdigit() take for digits: Arabic-Indic, Persian, full-width, NKo,
# Devanagari, mathematical bold; superscripts, subscripts and circled digits (isdigit() is True for these).
UNICODE_DIGITS = [
    "\u0661",
    "\u06f3",
    "\uff11",
    "\uff19",
    "\u07c0",
    "\u0967",
    "\U0001d7cf",
    "²",
    "³",
    "¹",
    "⁴",
    "₁",
    "①",
]
SIGNS = ["+", "-", "_", "e", "E", ","]
HOSTILE = WHITESPACE + UNICODE_DIGITS + SIGNS
ALPHABET = list(ASCII_DIGITS) + [".", "-", ":", "T", "Z"] + HOSTILE
# A look-alike of each ASCII digit that int() reads as the same digit.
LOOKALIKES = {d: [chr(0x0660 + int(d)), chr(0xFF10 + int(d)), chr(0x06F0 + int(d))] for d in ASCII_DIGITS}

noise = st.text(st.sampled_from(ALPHABET), max_size=24)
junk = st.lists(st.sampled_from(HOSTILE), min_size=1, max_size=3).map("".join)


def refused(parse: Callable[[str], Any], text: str) -> bool:
    try:
        parse(text)
    except ParseError:
        return True
    return False


def mutations(valid: str, extra: str) -> list[str]:
    """The valid string made invalid: junk around it, a final newline, a digit swapped for a look-alike."""
    out = [extra + valid, valid + extra, valid + "\n", "\n" + valid, " " + valid, valid + " ", valid + "\r\n"]
    for index, char in enumerate(valid):
        if char in LOOKALIKES:
            out += [valid[:index] + alike + valid[index + 1 :] for alike in LOOKALIKES[char]]
            break
    return out


def assert_mutations_refused(parse: Callable[[str], Any], valid: str, extra: str) -> None:
    for text in mutations(valid, extra):
        assert refused(parse, text), repr(text)


# ---- amounts -----------------------------------------------------------------------------------------


def amount_oracle(text: str) -> bool:
    if not text or len(text) > parsing.MAX_AMOUNT_STRING or any(c not in ASCII_DIGITS + "." for c in text):
        return False
    whole, dot, fraction = text.partition(".")
    return bool(whole) and (not dot or (1 <= len(fraction) <= 2 and "." not in fraction))


@given(noise)
@example("1.5\n")
@example("999999999.5\n")
@example("\u0661.5")
@example("1.5²")
@example("0..")
def test_amount_grammar_is_exact(text: str) -> None:
    assert (not refused(parsing.amount_kopecks, text)) == amount_oracle(text), repr(text)


# The grammar without ^...$: hypothesis, like Python's re, lets `$` match before a final newline.
@given(st.from_regex(AMOUNT_GRAMMAR, fullmatch=True).filter(lambda t: len(t) <= 40), junk)
def test_amount_round_trips_and_refuses_every_mutation(text: str, extra: str) -> None:
    kopecks = parsing.amount_kopecks(text)
    # Decimal() on text the grammar accepted (ASCII digits only), scaled without rounding (up to 42 digits).
    assert kopecks == Decimal(text).scaleb(2, Context(prec=60))
    formatted = format_kopecks(kopecks)  # two decimals: up to 3 characters longer than the text
    if len(formatted) <= parsing.MAX_AMOUNT_STRING:
        assert parsing.amount_kopecks(formatted) == kopecks
    else:
        assert refused(parsing.amount_kopecks, formatted)
    assert_mutations_refused(parsing.amount_kopecks, text, extra)


@pytest.mark.parametrize("text", ["1.5\n", "999999999.5\n", "1.5\r", " 1.5", "1.5\u00a0", "\uff11.5", "1.5\u2028"])
def test_money_refuses_the_amounts_that_once_lost_a_digit(text: str) -> None:
    with pytest.raises(AmountError):
        parse_amount(text)


# ---- ids ---------------------------------------------------------------------------------------------


def id_oracle(text: str) -> bool:
    whole, dot, fraction = text.partition(".")
    if not whole or len(whole) > 19 or any(c not in ASCII_DIGITS for c in whole):
        return False
    if dot and not (1 <= len(fraction) <= 20 and set(fraction) == {"0"}):
        return False
    return 1 <= int(whole) <= parsing.MAX_ID


@given(noise)
@example("1\n")
@example("\u0661\u0662")
@example("42.0")
@example("9223372036854775808")
def test_id_grammar_is_exact(text: str) -> None:
    assert (not refused(parsing.id_text, text)) == id_oracle(text), repr(text)


@given(st.integers(1, parsing.MAX_ID), st.sampled_from(["", ".0", ".00"]), junk)
def test_id_round_trips_and_refuses_every_mutation(value: int, tail: str, extra: str) -> None:
    text = str(value) + tail
    assert parsing.id_text(text) == value == parsing.id_text(str(value))
    assert_mutations_refused(parsing.id_text, text, extra)


@given(
    st.one_of(
        st.text(st.sampled_from(ALPHABET), max_size=8),
        st.booleans(),
        st.floats(allow_nan=True),
        st.none(),
        st.decimals(allow_nan=False, allow_infinity=False),
        st.integers(),
    )
)
def test_a_json_id_is_an_integer_or_an_integral_number(value: Any) -> None:
    expected = (
        type(value) is int
        or (isinstance(value, Decimal) and value == value.to_integral_value() and abs(value) < 10**20)
    ) and 1 <= value <= parsing.MAX_ID
    assert (not refused(parsing.json_id, value)) == expected, repr(value)
    if expected:
        assert parsing.json_id(value) == value


# ---- small numbers, epoch seconds ---------------------------------------------------------------------


@given(noise)
@example("\uff11\uff10")
@example("10\n")
def test_limit_grammar_is_exact(text: str) -> None:
    expected = 1 <= len(text) <= 3 and all(c in ASCII_DIGITS for c in text) and 1 <= int(text) <= 100
    assert (not refused(lambda t: parsing.small_number(t, 100), text)) == expected, repr(text)


@given(st.integers(1, 100), junk)
def test_limit_round_trips_and_refuses_every_mutation(value: int, extra: str) -> None:
    assert parsing.small_number(str(value), 100) == value
    assert_mutations_refused(lambda t: parsing.small_number(t, 100), str(value), extra)


@given(noise)
def test_epoch_seconds_grammar_is_exact(text: str) -> None:
    expected = 1 <= len(text) <= 12 and all(c in ASCII_DIGITS for c in text)
    assert (not refused(parsing.epoch_seconds, text)) == expected, repr(text)


@given(st.integers(0, 10**12 - 1), junk)
def test_epoch_seconds_round_trip_and_refuse_every_mutation(value: int, extra: str) -> None:
    assert parsing.epoch_seconds(str(value)) == value
    assert_mutations_refused(parsing.epoch_seconds, str(value), extra)


# ---- months, dates, timestamps ------------------------------------------------------------------------


def month_oracle(text: str) -> bool:
    if len(text) != 7 or text[4] != "-" or any(c not in ASCII_DIGITS for c in text[:4] + text[5:]):
        return False
    return 1970 <= int(text[:4]) <= 2999 and 1 <= int(text[5:]) <= 12


@given(st.one_of(noise, st.from_regex(r"[0-9]{4}-[0-9]{2}", fullmatch=True)))
@example(" 2026-11")
@example("2026-11\n")
@example("\uff12026-11")
def test_month_grammar_is_exact(text: str) -> None:
    assert (not refused(parsing.month, text)) == month_oracle(text), repr(text)


@given(st.integers(1970, 2999), st.integers(1, 12), junk)
def test_month_round_trips_and_refuses_every_mutation(year: int, number: int, extra: str) -> None:
    text = f"{year:04d}-{number:02d}"
    assert parsing.month(text) == (year, number)
    assert_mutations_refused(parsing.month, text, extra)


@given(st.dates(), junk)
@example(date(2026, 11, 1), " ")
def test_date_round_trips_and_refuses_every_mutation(day: date, extra: str) -> None:
    assert parsing.calendar_date(day.isoformat()) == day
    assert_mutations_refused(parsing.calendar_date, day.isoformat(), extra)


@pytest.mark.parametrize("text", ["20261101", "2026-W44-7", "2026-11-31", "2026-1-01", "2026-11-01T00:00", ""])
def test_only_the_plain_date_form_is_a_date(text: str) -> None:
    assert refused(parsing.calendar_date, text)


@given(noise)
@example("2026-11-26T04:16:01.123Z\n")
def test_an_accepted_timestamp_is_plain_ascii_without_whitespace_around(text: str) -> None:
    if not refused(parsing.timestamp, text):
        assert text.isascii() and text[0] in ASCII_DIGITS and text[-1] in ASCII_DIGITS + "Zz", repr(text)


@given(
    st.datetimes(min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30)),
    st.sampled_from(["Z", "z", "+00:00", "+03:00", "-11:30"]),
    st.sampled_from(["T", "t", " "]),
    junk,
)
def test_timestamp_round_trips_and_refuses_every_mutation(moment: datetime, zone: str, sep: str, extra: str) -> None:
    text = moment.isoformat(sep=sep, timespec="milliseconds") + zone
    parsed = parsing.timestamp(text)
    offset = timedelta(0) if zone in "Zz" else datetime.fromisoformat("2000-01-01T00:00" + zone).utcoffset()
    assert parsed.replace(tzinfo=None) == moment.replace(microsecond=moment.microsecond // 1000 * 1000) - offset
    assert parsing.timestamp(parsed.isoformat()) == parsed
    assert_mutations_refused(parsing.timestamp, text, extra)


# ---- words, keys, cursors ----------------------------------------------------------------------------

SORTS = ("created_at", "amount")
TYPES = ("deposit", "withdrawal", "charge")


@given(st.sampled_from(SORTS), junk)
def test_choice_is_exact(word: str, extra: str) -> None:
    assert parsing.choice(word, SORTS) == word
    for text in [extra + word, word + extra, word + "\n", word.upper(), " " + word]:
        assert refused(lambda t: parsing.choice(t, SORTS), text), repr(text)


@given(st.lists(st.sampled_from(TYPES), min_size=1, max_size=4), junk)
def test_choices_round_trip_and_refuse_junk(words: list[str], extra: str) -> None:
    text = ",".join(words)
    parsed = parsing.choices(text, TYPES)
    assert set(parsed) == set(words) and parsing.choices(",".join(parsed), TYPES) == parsed
    for bad in [text + extra, extra + text, text + ",", text + "\n", text.replace(",", ", ")]:
        assert bad == text or refused(lambda t: parsing.choices(t, TYPES), bad), repr(bad)


@given(st.sampled_from(["1", "0", "true", "false", "TRUE", "False"]), junk)
def test_flag_is_exact(word: str, extra: str) -> None:
    assert parsing.flag(word) is (word.lower() in ("1", "true"))
    for text in [extra + word, word + extra, word + "\n", "\uff11", "yes", ""]:
        assert refused(parsing.flag, text), repr(text)


@given(st.text(max_size=300))
@example("key\n")
@example("k\u00e9y")
@example(" key")
@example("")
def test_idempotency_key_is_1_to_255_visible_ascii_characters(text: str) -> None:
    expected = 1 <= len(text) <= 255 and all("!" <= c <= "~" for c in text)
    assert (not refused(parsing.idempotency_key, text)) == expected, repr(text)
    assert parsing.visible_ascii(text, 255) == expected


base64url = st.text(st.sampled_from("ABCXYZabcxyz0189-_"), min_size=1, max_size=40)


@given(base64url, base64url, junk)
def test_cursor_round_trips_and_refuses_every_mutation(payload: str, signature: str, extra: str) -> None:
    text = f"{payload}.{signature}"
    assert parsing.cursor_parts(text) == (payload, signature)
    assume(not (set(extra) <= set("-_eE")))  # "-", "_", "e", "E" are base64url characters
    for bad in [extra + text, text + "\n", " " + text, text + " ", text + "=", text + ".x", "\uff11" + text]:
        assert refused(parsing.cursor_parts, bad), repr(bad)


@given(st.text(st.sampled_from("0123456789abcdef"), min_size=64, max_size=64), junk)
def test_signature_is_64_lowercase_hex_digits(text: str, extra: str) -> None:
    assert parsing.hex_sha256(text) == text
    for bad in [text + extra, extra + text, text + "\n", text.upper() if text.upper() != text else text + "0"]:
        assert refused(parsing.hex_sha256, bad), repr(bad)


# ---- every parser: whitespace and newlines around a valid value are never taken --------------------------

VALID: list[tuple[str, Callable[[str], Any], str]] = [
    ("amount", parsing.amount_kopecks, "100.50"),
    ("id", parsing.id_text, "42"),
    ("limit", lambda t: parsing.small_number(t, 100), "20"),
    ("wait", lambda t: parsing.whole_seconds(t, 30), "0"),
    ("expires", parsing.epoch_seconds, "1795000000"),
    ("month", parsing.month, "2026-11"),
    ("date", parsing.calendar_date, "2026-11-26"),
    ("timestamp", parsing.timestamp, "2026-11-26T04:16:01.123Z"),
    ("sort", lambda t: parsing.choice(t, SORTS), "amount"),
    ("type", lambda t: parsing.choices(t, TYPES), "deposit,charge"),
    ("bom", parsing.flag, "1"),
    ("idempotency-key", parsing.idempotency_key, "key-1"),
    ("cursor", parsing.cursor_parts, "eyJ2IjoxfQ.c2ln"),
    ("signature", parsing.hex_sha256, "0" * 64),
]


@pytest.mark.parametrize(("name", "parse", "valid"), VALID, ids=[v[0] for v in VALID])
@given(space=st.sampled_from(WHITESPACE))
def test_no_parser_takes_whitespace_around_a_valid_value(
    name: str, parse: Callable[[str], Any], valid: str, space: str
) -> None:
    parse(valid)
    for text in (space + valid, valid + space, space + valid + space):
        assert refused(parse, text), (name, text)


# ---- Accept-Language (RFC 9110 section 12.5.4) --------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "language"),
    [
        (None, "ru"),
        ("", "ru"),
        ("en", "en"),
        ("EN-gb", "en"),
        ("en;q=0", "ru"),
        ("en;q=0.000", "ru"),
        ("en; q=0", "ru"),
        ("en;Q=0", "ru"),
        ("ru;q=0", "en"),
        ("ru;q=0, en;q=0", "ru"),
        ("*;q=0", "ru"),
        ("ru;q=0, *", "en"),
        ("en;q=0, *", "ru"),
        ("fr", "ru"),
        ("fr, en;q=0.1", "en"),
        ("en, ru", "en"),
        ("ru, en", "ru"),
        ("en;q=0.8, ru;q=0.8", "en"),
        ("en;q=0.5, ru;q=0.6", "ru"),
        ("en-US,en;q=0.9", "en"),
        ("en ; q=0.5", "en"),
        ("en;q=0.5, en-GB;q=0", "en"),
        # Malformed weights make the whole element count for nothing.
        ("en;q=2", "ru"),
        ("en;q=1.5", "ru"),
        ("en;q=0.0001", "ru"),
        ("en;q=-0", "ru"),
        ("en;q=\uff11", "ru"),
        ("en;q=\u0661", "ru"),
        ("en;q=1e0", "ru"),
        ("en;q=inf", "ru"),
        ("en;q=nan", "ru"),
        ("en;q=", "ru"),
        ("en;q=0.5;x=1", "ru"),
        ("en\n", "ru"),
        ("e\u0301n", "ru"),
        ("ru;q=0.1, en;q=\u0661", "ru"),
    ],
)
def test_accept_language(header: str | None, language: str) -> None:
    assert negotiate_language(header) == language


qvalues = st.sampled_from(["0", "0.0", "0.5", "0.25", "0.999", "1", "1.0", "1.000"])
# Not weights at all ("0.5 " is fine: whitespace before a list's comma is the list's; "0,5" is two elements).
bad_qvalues = st.sampled_from(["2", "1.5", " 1", "\uff11", "abc", "", "0.0001", "-0", "1.001", ".5", "0.5;x=1"])
languages = st.sampled_from(["en", "ru", "en-GB", "RU-ru", "EN"])


def element(tag: str, q: str | None) -> str:
    return tag if q is None else f"{tag};q={q}"


@given(
    st.lists(st.tuples(languages, st.one_of(st.none(), qvalues)), max_size=5),
    st.lists(st.tuples(st.integers(0, 5), languages, bad_qvalues), max_size=4),
)
def test_accept_language_takes_the_best_acceptable_and_ignores_malformed_elements(
    good: list[tuple[str, str | None]], bad: list[tuple[int, str, str]]
) -> None:
    elements = [element(tag, q) for tag, q in good]
    chosen = negotiate_language(", ".join(elements))
    best: dict[str, float] = {}
    for tag, q in good:
        primary = tag.split("-")[0].lower()
        best[primary] = max(best.get(primary, 0.0), float(q) if q is not None else 1.0)
    acceptable = {lang for lang, q in best.items() if q > 0}
    if acceptable:
        assert chosen in acceptable and best[chosen] == max(best.values())
    else:
        assert chosen == ("en" if best.get("ru") == 0 and "en" not in best else "ru")
    noisy = list(elements)
    for position, tag, q in bad:
        noisy.insert(min(position, len(noisy)), element(tag, q))
    assert negotiate_language(", ".join(noisy)) == chosen


# ---- the OpenAPI spec publishes the same grammars ----------------------------------------------------


def published_parameters() -> dict[str, dict[str, Any]]:
    spec = build_spec()
    out: dict[str, dict[str, Any]] = {}
    for methods in spec["paths"].values():
        for operation in methods.values():
            for param in operation.get("parameters", []):
                if "name" in param:
                    out[param["name"]] = param["schema"]
    out["Idempotency-Key"] = spec["components"]["parameters"]["IdempotencyKey"]["schema"]
    return out


PUBLISHED = published_parameters()
PUBLISHED_GRAMMARS: list[tuple[str, Callable[[str], Any]]] = [
    ("month", parsing.month),
    ("expires", parsing.epoch_seconds),
    ("signature", parsing.hex_sha256),
    ("cursor", parsing.cursor_parts),
    ("after", lambda t: parsing.cursor_parts(t, MAX_EVENT_CURSOR_LENGTH)),
    ("type", lambda t: parsing.choices(t, TRANSACTION_TYPES)),
    ("Idempotency-Key", parsing.idempotency_key),
]


def published_accepts(schema: dict[str, Any], text: str) -> bool:
    """JSON Schema's reading: the pattern as ECMA-262 reads `^...$` (no newline before the end), and maxLength."""
    return re.fullmatch(schema["pattern"], text) is not None and len(text) <= schema.get("maxLength", len(text))


@pytest.mark.parametrize(("name", "parse"), PUBLISHED_GRAMMARS, ids=[name for name, _ in PUBLISHED_GRAMMARS])
@given(data=st.data())
def test_published_patterns_agree_with_the_parsers(name: str, parse: Callable[[str], Any], data: st.DataObject) -> None:
    schema = PUBLISHED[name]
    text = data.draw(st.one_of(st.from_regex(schema["pattern"], fullmatch=True), noise, st.text(max_size=12)))
    assert published_accepts(schema, text) == (not refused(parse, text)), (name, text)


def test_ids_and_limits_are_published_as_integers_in_range() -> None:
    for name in ("user_id", "service_id", "order_id"):
        assert PUBLISHED[name] == {"type": "integer", "minimum": 1, "maximum": parsing.MAX_ID, "examples": [42]}
    assert PUBLISHED["limit"]["type"] == "integer" and PUBLISHED["limit"]["maximum"] == 100


@pytest.mark.parametrize(("text", "value"), [("0", 0), ("1", 1), ("30", 30), ("07", 7)])
def test_whole_seconds_take_digits_up_to_the_bound(text: str, value: int) -> None:
    assert parsing.whole_seconds(text, 30) == value


@pytest.mark.parametrize("text", ["31", "-1", "+1", "1.0", "0.5", "", "1e1", "٣", "1000", " 1"])
def test_whole_seconds_refuse_anything_else(text: str) -> None:
    assert refused(lambda t: parsing.whole_seconds(t, 30), text)


# ---- Accept: the statement's CSV or JSON ------------------------------------------------------------

QVALUE = re.compile(r"0(\.[0-9]{0,3})?|1(\.0{0,3})?")  # RFC 9110 section 12.4.2, written out here


@pytest.mark.parametrize(
    "text",
    ["1.0000", "0.5e1", "5e-1", "nan", "NaN", "inf", "-inf", "-0", "+1", " 1", "1 ", ".5", "0,5", "1.5", "2", ""],
)
def test_a_qvalue_is_exactly_the_grammar(text: str) -> None:
    with pytest.raises(ParseError):
        parsing.qvalue(text)


@given(st.from_regex(QVALUE, fullmatch=True))
def test_every_qvalue_of_the_grammar_is_read_in_thousandths(text: str) -> None:
    assert parsing.qvalue(text) == round(float(text) * 1000)


@pytest.mark.parametrize(
    ("accept", "csv"),
    [
        ("text/csv", True),
        ("text/csv;q=1.000, application/json;q=0.999", True),
        ("application/json;q=0.5, text/csv", True),
        ('text/csv; charset="utf-8"; q=0.9, application/json;q=0.8', True),
        ("TEXT/CSV;Q=1", True),
        ("application/json, text/csv", False),  # the same q: the first listed
        ("text/csv;q=0, application/json", False),
        ("*/*", False),
        # malformed weights never count, whatever float() would make of them
        ("text/csv;q=1.0000", False),
        ("text/csv;q=0.5e1", False),
        ("text/csv;q=nan", False),
        ("text/csv;q=inf", False),
        ("text/csv;q=-0", False),
        ("text/csv;q =1", False),
        ('text/csv;q="1"', False),
        ("application/json;q=0.5e1, text/csv;q=0.1", True),  # the JSON element is malformed: CSV is the only one
        ("application/json;q=nan, text/csv;q=0.1", True),
    ],
)
def test_wants_csv_reads_weights_by_the_exact_grammar(accept: str, csv: bool) -> None:
    assert wants_csv(accept) is csv
