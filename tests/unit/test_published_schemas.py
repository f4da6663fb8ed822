"""The spec's request schemas say exactly what validation accepts (schemathesis found them apart)."""

from __future__ import annotations

import re
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from billing.api.jsonbody import parse_json
from billing.core.money import PUBLISHED_AMOUNT_PATTERN, AmountError, parse_amount
from billing.core.parsing import AMOUNT_GRAMMAR, MAX_AMOUNT_STRING
from billing.core.schemas import DepositRequest

PUBLISHED = re.compile(PUBLISHED_AMOUNT_PATTERN)


def accepted(text: str) -> bool:
    try:
        parse_amount(text)
        return True
    except AmountError:
        return False


def published(text: str) -> bool:
    return bool(PUBLISHED.fullmatch(text)) and len(text) <= MAX_AMOUNT_STRING  # ECMA-262: no newline before $


@given(st.from_regex(AMOUNT_GRAMMAR, fullmatch=True))
def test_published_amount_pattern_matches_exactly_the_accepted_strings(text: str) -> None:
    assert published(text) == accepted(text), text


@pytest.mark.parametrize(
    "text",
    [
        "0",
        "0.0",
        "0.00",
        "000",
        "0.01",
        "0.1",
        "0.10",
        "00.05",
        "1",
        "100.50",
        "999999999.99",
        "1000000000",
        "1000000000.0",
        "1000000000.00",
        "1000000000.01",
        "1000000001",
        "0001000000000.00",
        "1" + "0" * 40,
    ],
)
def test_published_amount_pattern_on_the_edges(text: str) -> None:
    assert published(text) == accepted(text), text


@pytest.mark.parametrize(("raw", "user_id"), [("42", 42), ("42.0", 42), ("4.2E+1", 42), ("1E+2", 100)])
def test_an_integral_json_number_is_an_id_as_json_schema_reads_it(raw: str, user_id: int) -> None:
    request = DepositRequest.model_validate(parse_json(f'{{"user_id": {raw}, "amount": "1"}}'.encode()))
    assert request.user_id == user_id


@pytest.mark.parametrize("raw", ["42.5", "0.0", "true", '"42"', "1E+999999999", "9223372036854775808.0"])
def test_other_numbers_are_not_ids(raw: str) -> None:
    with pytest.raises(ValueError):
        DepositRequest.model_validate(parse_json(f'{{"user_id": {raw}, "amount": "1"}}'.encode()))


def test_decimal_ids_are_exact() -> None:
    assert (
        DepositRequest.model_validate({"user_id": Decimal("9223372036854775807.000"), "amount": "1"}).user_id
        == 2**63 - 1
    )
