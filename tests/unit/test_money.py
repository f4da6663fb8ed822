"""The money parser and formatter: exact kopecks, strict formats, bounds."""

from __future__ import annotations

from decimal import Decimal
from fractions import Fraction

import pytest
from hypothesis import given
from hypothesis import strategies as st

from billing.core.money import MAX_OPERATION_KOPECKS, AmountError, format_kopecks, parse_amount

valid_kopecks = st.integers(min_value=1, max_value=MAX_OPERATION_KOPECKS)


@given(valid_kopecks)
def test_format_then_parse_round_trips(kopecks: int) -> None:
    assert parse_amount(format_kopecks(kopecks)) == kopecks


@given(valid_kopecks)
def test_decimal_numbers_parse_exactly(kopecks: int) -> None:
    assert parse_amount(Decimal(kopecks).scaleb(-2)) == kopecks


@given(st.integers(min_value=-(10**18), max_value=10**18))
def test_format_has_two_fraction_digits(kopecks: int) -> None:
    text = format_kopecks(kopecks)
    whole, _, fraction = text.lstrip("-").partition(".")
    assert len(fraction) == 2 and whole.isdigit()
    assert int(text.replace(".", "")) == kopecks


@given(st.text(max_size=30))
def test_arbitrary_strings_either_parse_exactly_or_fail_cleanly(text: str) -> None:
    try:
        kopecks = parse_amount(text)
    except AmountError:
        return
    assert Decimal(text) * 100 == kopecks


@given(st.decimals(allow_nan=False, allow_infinity=False, min_value=-(10**10), max_value=10**10))
def test_arbitrary_decimals_either_parse_exactly_or_fail_cleanly(value: Decimal) -> None:
    exact = Fraction(value) * 100
    valid = 0 < exact <= MAX_OPERATION_KOPECKS and exact.denominator == 1
    try:
        kopecks = parse_amount(value)
    except AmountError:
        assert not valid
        return
    assert valid and kopecks == exact


@pytest.mark.parametrize(
    ("value", "kopecks"),
    [
        ("100.50", 10050),
        ("0.01", 1),
        ("7", 700),
        ("7.5", 750),
        (1, 100),
        (Decimal("1.500"), 150),
        (Decimal("1E+2"), 10000),
        (Decimal("0.001E+1"), 1),
        (Decimal("1." + "0" * 60), 100),
        ("1000000000.00", MAX_OPERATION_KOPECKS),
        (1_000_000_000, MAX_OPERATION_KOPECKS),
    ],
)
def test_valid_amounts(value: object, kopecks: int) -> None:
    assert parse_amount(value) == kopecks


@pytest.mark.parametrize(
    "value",
    [
        "",
        " 1",
        "1 ",
        "-1",
        "+1",
        "1.005",
        "1.",
        ".5",
        "1e2",
        "1,50",
        "0",
        "0.00",
        "١٢",
        "1000000000.01",
        "NaN",
        True,
        False,
        None,
        1.5,
        [],
        {},
        Decimal("1.005"),
        Decimal("NaN"),
        Decimal("Infinity"),
        Decimal("-1"),
        Decimal("1E+400"),
        Decimal("1E-400"),
        Decimal("1E-999999999"),
        Decimal("-0.00"),
        Decimal("1.000000000000000000000000000001"),  # more digits than the default decimal context keeps
        Decimal("0.0100000000000000000000000000001"),
        Decimal("123456789.0000000000000000000001"),
        0,
        -5,
        10**30,
    ],
)
def test_invalid_amounts(value: object) -> None:
    with pytest.raises(AmountError):
        parse_amount(value)
