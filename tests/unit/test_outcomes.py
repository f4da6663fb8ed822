"""Scripts decide in the ledger's terms; one place (billing/api/outcomes.py) turns outcomes into HTTP."""

from __future__ import annotations

import re

import orjson
import pytest

from billing.api.outcomes import APPLIED_STATUS, answer
from billing.core.errors import PROBLEMS, problem_body
from billing.ledger.outcomes import Applied, KeyReused, NotRun, Refused, Unchanged, outcome_from_record
from billing.ledger.scripts import CREDIT, DEBIT, LUA_DIR, SCRIPT_NAMES, SETTLE
from billing.ledger.service import OPERATIONS

LUA_FILES = sorted(LUA_DIR.glob("*.lua"))
BODY = {"balance": {"user_id": "1", "available": "150", "reserved": "0"}}


def test_every_refusal_of_the_scripts_is_a_problem_code() -> None:
    # refuse('<code>'), and the codes debit_problem() returns for refuse(code)
    pattern = r"refuse\('([a-z_]+)'\)|return '([a-z_]+)'$"
    found = [match for path in LUA_FILES for match in re.findall(pattern, path.read_text(), re.MULTILINE)]
    refusals = {code for pair in found for code in pair if code}
    assert refusals >= {"insufficient_funds", "account_not_found", "reservation_closed"}
    assert refusals <= PROBLEMS.keys()
    # a refusal names its code and nothing else: no status travels with it
    for path in LUA_FILES:
        assert not re.search(r"refuse\(\d|apply\(\d|status = status", path.read_text()), path.name


def test_every_operation_has_the_status_of_its_success() -> None:
    assert set(APPLIED_STATUS) == set(OPERATIONS) | {"set_service"}
    # a transfer between partitions is answered as the transfer its three scripts make up; the sweeper's expire
    # answers no request
    assert set(SCRIPT_NAMES) - {"withdraw", DEBIT, CREDIT, SETTLE, "expire"} <= set(APPLIED_STATUS)


@pytest.mark.parametrize(
    ("record", "outcome"),
    [
        ({"result": "applied", "body": BODY, "lang": "ru"}, Applied(BODY, True, "ru")),
        ({"result": "unchanged", "body": BODY}, Unchanged(BODY, True)),
        ({"result": "refused", "code": "insufficient_funds"}, Refused("insufficient_funds", True)),
    ],
)
def test_a_recorded_outcome_reads_back(record: dict[str, object], outcome: object) -> None:
    assert outcome_from_record(orjson.dumps(record), replayed=True) == outcome


@pytest.mark.parametrize("record", [b'{"result": "maybe"}', b'{"status": 201, "body": {}}'])
def test_an_unknown_record_is_an_error(record: bytes) -> None:
    with pytest.raises(ValueError):
        outcome_from_record(record, replayed=False)


def test_outcomes_answer_through_the_one_table() -> None:
    assert answer("deposit", Applied(BODY), "en").status == 201
    assert answer("recognize", Applied(BODY), "en").status == 200
    assert answer("reserve", Unchanged(BODY), "en").status == 200
    assert answer("deposit", Applied(BODY), "en").body == {
        "balance": {"user_id": 1, "available": "1.50", "reserved": "0.00"}
    }
    for code in ("insufficient_funds", "account_not_found", "balance_limit_exceeded", "reservation_conflict"):
        refused = answer("transfer", Refused(code, replayed=True), "en")
        assert (refused.status, refused.body, refused.replayed) == (PROBLEMS[code][0], problem_body(code), True)
    assert answer("deposit", KeyReused(), "en").status == 422
    assert (answer("deposit", NotRun(retryable=True), "en").body["code"]) == "unavailable"
    assert (answer("deposit", NotRun(retryable=False), "en").status) == 500


def test_a_replay_renders_in_the_language_of_its_first_answer() -> None:
    txn = {
        "id": "1",
        "type": "deposit",
        "user_id": "1",
        "amount": "150",
        "available_after": "150",
        "reserved_after": "0",
        "created_at": "0",
    }
    first = answer("deposit", Applied({"transaction": txn}, False, "ru"), "ru")
    again = answer("deposit", Applied({"transaction": txn}, True, "ru"), "en")
    assert orjson.dumps(again.body) == orjson.dumps(first.body)
