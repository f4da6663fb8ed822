"""The batch hot path's shortcuts give exactly what the general code gives."""

from __future__ import annotations

import random
from decimal import Decimal
from typing import Any

import orjson
import pytest
from pydantic import ValidationError
from redis.connection import Connection

from billing.api.handlers.batch import _operations
from billing.api.jsonbody import _has_float, parse_json
from billing.core.errors import ApiError, validation_errors
from billing.core.money import format_kopecks
from billing.core.schemas import BATCH_OPERATIONS, BatchRequest
from billing.infra import redis_raw
from billing.ledger.scripts import fingerprint
from billing.ledger.service import OPERATIONS, request_fingerprint, validate


def reference_format(kopecks: int) -> str:
    sign = "-" if kopecks < 0 else ""
    rubles, rest = divmod(abs(kopecks), 100)
    return f"{sign}{rubles}.{rest:02d}"


def test_format_kopecks_matches_the_divmod_definition() -> None:
    rng = random.Random(5)
    values = list(range(-1001, 1002)) + [10**15, -(10**15), 2**63 - 1, -(2**63)]
    values += [rng.randint(-(10**16), 10**16) for _ in range(2000)]
    for kopecks in values:
        assert format_kopecks(kopecks) == reference_format(kopecks)


@pytest.mark.parametrize(
    "value, expected",
    [
        ({"a": [1, {"b": "1.5"}], "c": None}, False),
        ({"a": [1, {"b": 1.5}]}, True),
        ([[[[0.0]]]], True),
        ([True, "x", {"y": [None, 2**70]}], False),
        (1e3, True),
    ],
)
def test_float_detection_looks_everywhere(value: Any, expected: bool) -> None:
    assert _has_float(value) is expected


def reference_has_float(value: Any) -> bool:
    if type(value) is dict:
        return any(reference_has_float(item) for item in value.values())
    if type(value) is list:
        return any(reference_has_float(item) for item in value)
    return type(value) is float


def random_json(rng: random.Random, depth: int) -> Any:
    kind = rng.choice(["str", "int", "bool", "none", "float", "dict", "list"] if depth else ["str", "int", "bool"])
    if kind == "dict":
        return {f"k{i}": random_json(rng, depth - 1) for i in range(rng.randint(0, 4))}
    if kind == "list":
        return [random_json(rng, depth - 1) for _ in range(rng.randint(0, 4))]
    return {"str": "1.5", "int": 2**70, "bool": True, "none": None, "float": 1.5}[kind]


def test_float_detection_agrees_with_a_recursive_walk() -> None:
    rng = random.Random(11)
    for _ in range(3000):
        value = random_json(rng, rng.randint(0, 4))
        assert _has_float(value) is reference_has_float(value), value


def test_a_deeply_nested_body_is_still_parsed_exactly() -> None:
    body = b"[" * 500 + b"1.10" + b"]" * 500
    value = parse_json(body)
    for _ in range(500):
        value = value[0]
    assert value == Decimal("1.10")


@pytest.mark.parametrize(
    "data",
    [
        {"operations": [{"op": "deposit"}]},
        {"operations": [{}] * 1000},
        {"operations": []},
        {"operations": [{}] * 1001},
        {"operations": {"op": "deposit"}},
        {"operations": [1]},
        {"operations": [[]]},
        {"operations": [{}], "extra": 1},
        {},
        {"operations": None},
    ],
)
def test_envelope_shortcut_agrees_with_the_model(data: dict[str, Any]) -> None:
    try:
        expected: Any = BatchRequest.model_validate(data).operations
    except Exception:
        expected = "refused"
    try:
        got: Any = _operations(data)
    except ApiError as exc:
        assert exc.code == "validation_error"
        got = "refused"
    assert got == expected


def test_the_fingerprint_is_the_sorted_json_of_every_validated_field() -> None:
    """request_fingerprint reads __dict__ for speed: it must be exactly model_dump() for every model (a later field
    left out while it is absent: Request.LATER_FIELDS)."""
    examples = {
        "deposit": {"user_id": 1, "amount": "1.5", "comment": ""},
        "withdrawal": {"user_id": 2**63 - 1, "amount": 3},
        "transfer": {"from_user_id": 1, "to_user_id": 2, "amount": "0.01", "comment": "x"},
        "reserve": {"user_id": 1, "service_id": 2, "order_id": 3, "amount": "4", "service_name": "S"},
        "reserve-for-a-minute": {"user_id": 1, "service_id": 2, "order_id": 3, "amount": "4", "expires_in": 60},
        "recognize": {"user_id": 1, "service_id": 2, "order_id": 3, "amount": "4"},
        "cancel": {"user_id": 1, "service_id": 2, "order_id": 3},
        "refund": {"user_id": 1, "service_id": 2, "order_id": 3, "amount": "0.5", "comment": "y"},
    }
    assert {name.split("-")[0] for name in examples} == set(BATCH_OPERATIONS)
    for name, fields in examples.items():
        spec = OPERATIONS[name.split("-")[0]]
        request = spec.model.model_validate(fields)
        assert request.__dict__ == request.model_dump()
        dump = request.model_dump()
        absent = {field for field in request.LATER_FIELDS if dump[field] is None}
        canonical = orjson.dumps({k: v for k, v in dump.items() if k not in absent}, option=orjson.OPT_SORT_KEYS)
        assert request_fingerprint(spec, request) == fingerprint(spec.recorded_as, canonical)


def test_pack_is_the_resp_redis_py_would_send() -> None:
    command = ["EVALSHA", "ab" * 20, "2", "pre:{u:1}:acct", "ключ ✓", "", "comment with \r\n inside", "😀"]
    expected = b"".join(Connection().pack_command(*command))
    assert redis_raw.pack(command) == expected


@pytest.mark.parametrize("name", list(OPERATIONS))
@pytest.mark.parametrize(
    "data",
    [
        {"user_id": 1, "amount": "1.00", "comment": "x"},
        {"user_id": 1, "from_user_id": 1, "to_user_id": 2, "amount": 5, "service_id": 3, "order_id": 4},
        {"from_user_id": 1, "to_user_id": 2, "amount": "0.5"},
        {"user_id": 1, "service_id": 3, "order_id": 4, "amount": "2", "service_name": "s", "expires_in": 60},
        {"user_id": "1", "amount": "1.001", "comment": "\x00"},
        {"user_id": 1, "amount": Decimal("1.5"), "extra": 1},
        {},
        [],
    ],
)
def test_validate_is_model_validate(name: str, data: Any) -> None:
    """validate() calls the model's validator itself: the same request, or the same field errors, as model_validate."""
    spec = OPERATIONS[name]
    try:
        expected: Any = spec.model.model_validate(data)
    except ValidationError as exc:
        expected = validation_errors(exc)
    try:
        got: Any = validate(spec, data)
    except ApiError as exc:
        got = exc.to_problem()["errors"]
    assert got == expected
