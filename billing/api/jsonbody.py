"""Request bodies: JSON bytes to Python values, with numbers kept exact (floats become Decimal)."""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

import orjson

from billing.core.errors import ApiError


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not allowed in JSON")


def _parse_int(text: str) -> int | Decimal:
    # Python refuses int() of over 4300 digits; such a number is valid JSON, just out of every bound,
    # so keep it exact as a Decimal and let validation say which field is wrong.
    return int(text) if len(text) <= 4000 else Decimal(text)


# The types of orjson's output that hold nothing and are not float.
_SCALARS = frozenset({str, int, bool, type(None)})


def _has_float(value: Any) -> bool:
    """Whether a float is anywhere in orjson's output (exact types only; a loop: no recursion per value)."""
    stack = [value]
    while stack:
        item = stack.pop()
        kind = type(item)
        if kind is float:
            return True
        if kind is dict:
            values = item.values()
            # An object of scalars only (each operation of a batch) is settled by one C-level pass over its types.
            if not _SCALARS.issuperset(map(type, values)):
                stack.extend(values)
        elif kind is list:
            stack.extend(item)
    return False


def parse_json(body: bytes) -> Any:
    """orjson for speed; the stdlib parser with Decimal when a float or a huge integer needs exactness."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        data = None
        exact_needed = True
    else:
        exact_needed = _has_float(data)
    if exact_needed:
        try:
            data = json.loads(
                body.decode("utf-8"), parse_float=Decimal, parse_int=_parse_int, parse_constant=_reject_constant
            )
        except (ValueError, RecursionError) as exc:
            raise ApiError("invalid_json", f"Body is not valid JSON: {str(exc)[:200]}") from None
    return data


def parse_json_object(body: bytes) -> dict[str, Any]:
    data = parse_json(body)
    if not isinstance(data, dict):
        raise ApiError(
            "validation_error", "Body must be a JSON object", [{"field": "body", "message": "not an object"}]
        )
    return data
