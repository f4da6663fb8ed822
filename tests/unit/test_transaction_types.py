"""TransactionType (billing/core/transactions.py) is the one list of types: the Lua scripts write exactly
these, and each has its effect, its description in every language and its label on the console."""

from __future__ import annotations

import re
from pathlib import Path

from billing.console.text import TEXT
from billing.core.transactions import REFUNDED, RESERVATION_TYPES, REVENUE, TOTALS, TransactionType
from billing.infra.pipelines import load_pipeline
from billing.ledger.scripts import TOTAL_FIELDS
from billing.views.descriptions import SUPPORTED_LANGUAGES, describe

LUA = Path(__file__).resolve().parents[2] / "lua"


def lua_types() -> set[str]:
    """The `type` of every transaction record a script writes: new_txn(<partition>, '<type>', ...)
    (lua/_prelude.lua)."""
    found: set[str] = set()
    for path in sorted(LUA.glob("*.lua")):
        found |= set(re.findall(r"\bnew_txn\(\s*\w+,\s*'([a-z_]+)'", path.read_text(encoding="utf-8")))
    return found


def test_the_scripts_write_exactly_the_transaction_types() -> None:
    assert lua_types() == {t.value for t in TransactionType}


def test_lua_writes_transaction_records_only_through_new_txn() -> None:
    """Else the check above would miss a type: no script sets a record's type another way."""
    for path in sorted(LUA.glob("*.lua")):
        text = path.read_text(encoding="utf-8")
        assert len(re.findall(r"\btype\s*=", text)) == (1 if path.name == "_prelude.lua" else 0), path.name


def test_effects_keep_money_in_one_place() -> None:
    """Each type moves money between available and reserved, or in or out of the account, never both ways."""
    for t in TransactionType:
        assert t.available in (-1, 0, 1) and t.reserved in (-1, 0, 1), t
        assert (t.available, t.reserved) != (0, 0), t
        # a reservation's types: those that move its reserved money, and the refund of its charge
        assert t.of_reservation == (t.reserved != 0 or t is TransactionType.REFUND), t
    assert set(TOTALS) == {
        "deposited",
        "withdrawn",
        "revenue",
        "transfers_in",
        "transfers_out",
        "transfers_reversed",
        "refunded",
    }
    assert set(TOTALS) == set(TOTAL_FIELDS)
    prelude = (LUA / "_prelude.lua").read_text(encoding="utf-8")
    fields = re.search(r"local TOTAL_FIELDS = \{([^}]*)\}", prelude)
    assert fields is not None and tuple(re.findall(r"'(\w+)'", fields.group(1))) == TOTAL_FIELDS


def test_every_type_has_a_description_and_a_console_label() -> None:
    refs = {"service_id": 1, "order_id": 2, "counterparty_user_id": 3}
    for t in TransactionType:
        for lang in SUPPORTED_LANGUAGES:
            assert describe(t.value, "1.00", lang, refs), (t, lang)
            assert f"t_{t.value}" in TEXT[lang], (t, lang)


def test_the_pipelines_read_the_types_they_name() -> None:
    """Recovery's per-reservation sums read every type of a reservation; the revenue report nets the two types
    whose totals are revenue and refunds (one pipeline each)."""
    [match, *_] = load_pipeline("reservation_sums").stages
    assert match["$match"]["type"]["$in"] == list(RESERVATION_TYPES)
    report = {TOTALS[REVENUE].value: "revenue", TOTALS[REFUNDED].value: "revenue_refunds"}
    assert report == {"charge": "revenue", "refund": "revenue_refunds"}
    for kind, name in report.items():
        [match, *_] = load_pipeline(name).stages
        assert match["$match"]["type"] == kind
