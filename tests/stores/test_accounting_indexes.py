"""explain() of the accounting views' queries on a MongoDB wire server (SecantusDB): each walks user_created;
the revenue report's walks type_created; the console's look-ups walk the _id index and service_order."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest
from bson import Int64

from billing.bootstrap import Context
from billing.core.config import Settings
from billing.core.parsing import INT64_MAX
from billing.projection.store import TRANSACTION_INDEXES, LedgerStore
from billing.views.accounting import LATEST_SCAN, USER_CREATED
from billing.views.reports import REFUNDS, REVENUE
from tests.stores.test_history_indexes import stages
from tests.support.ledger_docs import BASE_MS, create_history_indexes, insert, ledger

pytestmark = [
    pytest.mark.parametrize("mongo_backend", ["secantus"], indirect=True),  # mongomock has no query planner
    pytest.mark.parametrize("redis_backend", ["fakeredis"], indirect=True),
]


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return settings.model_copy(update={"projector_enabled": False})


# What SecantusDB 0.7 reports, recorded (as tests/stores/test_history_indexes.py does for history): its planner
# counts only a single-field sort on an index's leading field as served by the index, so a (created_at, _id)
# sort after the user_id equality shows a SORT stage over FETCH over IXSCAN, bounded by the limit where there
# is one; mongod reports none for these queries (the walk already yields that order).
RECORDED = (["SORT", "FETCH", "IXSCAN"], ["LIMIT", "FETCH", "IXSCAN"], ["FETCH", "IXSCAN"])
TYPE_CREATED = dict(TRANSACTION_INDEXES)["type_created"]
SERVICE_ORDER = dict(TRANSACTION_INDEXES)["service_order"]


def scans(plan: dict[str, Any]) -> tuple[list[str], list[dict[str, Any]]]:
    chain = [stage for stage in stages(plan) if not stage["stage"].startswith("PROJECTION")]
    return [stage["stage"] for stage in chain], [stage for stage in chain if stage["stage"] == "IXSCAN"]


async def test_balance_lookups_walk_user_created_backwards_with_no_sort(ctx: Context) -> None:
    await create_history_indexes(ctx.mongo)
    await insert(ctx.mongo, ledger(300, users=(1, 2, 3)))
    views = ctx.accounting
    for moment_ms in (BASE_MS + 50, BASE_MS + 51):
        moment = datetime.fromtimestamp(moment_ms / 1000, tz=UTC)
        # a band of the usual read, the rest before it, and the read for a lagging projection
        band = datetime.fromtimestamp((moment_ms - 20) / 1000, tz=UTC)
        for upto, limit, since in ((None, LATEST_SCAN, band), (None, LATEST_SCAN, None), (120, 1, None)):
            filter_ = views.before_filter(1, moment, upto, since)
            explained = await views.latest_cursor(filter_, limit).explain()
            plan = explained["queryPlanner"]["winningPlan"]
            names, scanned = scans(plan)
            if upto is not None:  # SecantusDB's planner scans the collection for an `_id` bound: recorded
                assert names in (["SORT", "COLLSCAN"], *RECORDED), plan
                continue
            [scan] = scanned
            assert names in RECORDED, plan
            assert scan["keyPattern"] == dict(USER_CREATED), plan
            sort = [stage for stage in stages(plan) if stage["stage"] == "SORT"]
            assert all(stage["limitAmount"] == limit for stage in sort), plan  # a top-k, never the whole range


async def test_a_statements_queries_use_user_created(ctx: Context) -> None:
    await create_history_indexes(ctx.mongo)
    await insert(ctx.mongo, ledger(300, users=(1, 2, 3)))
    views = ctx.accounting
    month = views.month("2026-09")
    explained = await views.month_cursor(1, month).explain()
    names, [scan] = scans(explained["queryPlanner"]["winningPlan"])
    assert names in RECORDED, explained
    assert scan["keyPattern"] == dict(USER_CREATED)
    pipeline = views.statement_pipeline(1, month, INT64_MAX)
    explain = {"aggregate": "transactions", "pipeline": pipeline, "cursor": {}}
    answer = await ctx.mongo.command({"explain": explain})
    planner = answer.get("queryPlanner") or answer["stages"][0]["$cursor"]["queryPlanner"]
    names, [scan] = scans(planner["winningPlan"])
    assert "COLLSCAN" not in names and "SORT" not in names, json.dumps(answer, default=str)
    assert scan["keyPattern"] == dict(USER_CREATED)


async def test_the_views_answer_before_the_projector_makes_the_index(ctx: Context) -> None:
    docs = ledger(30, users=(1,))
    for doc in docs:
        doc["available_after"] = doc["_id"] * 100
    await insert(ctx.mongo, docs)  # no indexes
    views = ctx.accounting
    month = views.month("2026-09")
    moment = datetime.fromtimestamp((BASE_MS + 6) / 1000, tz=UTC)  # ids 15, 16, 17 share the millisecond before
    assert await views._balance_before(1, moment, INT64_MAX) == (1700, 0)
    statement = await views._statement(1, month, INT64_MAX)
    assert statement.count == 30 and statement.closing == (3000, 0)
    # the watermark: ids above it are not read, however many of the latest there are
    assert await views._balance_before(1, moment, 2) == (200, 0)
    assert (await views._statement(1, month, 20)).closing == (2000, 0)
    # the bands: the latest transaction years before the moment, and a moment near year 1 (no overflow)
    years_later = datetime(2036, 1, 1, tzinfo=UTC)
    assert await views._balance_before(1, years_later, INT64_MAX) == (3000, 0)
    assert await views._balance_before(1, datetime(1, 1, 2, tzinfo=UTC), INT64_MAX) == (0, 0)
    assert [line async for line in views._month_docs(1, month, INT64_MAX)][-1]["_id"] == 30


async def test_the_revenue_report_reads_charges_and_refunds_by_type_created(ctx: Context) -> None:
    """Each of the report's two aggregations (charges, refunds) reads a range of type_created."""
    await create_history_indexes(ctx.mongo)
    docs = ledger(300, users=(1, 2, 3))
    for doc in docs:
        doc["service_id"] = Int64(int(doc["_id"]) % 4 + 1)
    await insert(ctx.mongo, docs)
    month = ctx.reports.month("2026-09")
    for pipeline in (REVENUE, REFUNDS):
        explain = {"aggregate": "transactions", "pipeline": pipeline.bind(start=month.start, end=month.end)}
        answer = await ctx.mongo.command({"explain": {**explain, "cursor": {}}})
        planner = answer.get("queryPlanner") or answer["stages"][0]["$cursor"]["queryPlanner"]
        names, [scan] = scans(planner["winningPlan"])
        assert names == ["FETCH", "IXSCAN"], json.dumps(answer, default=str)
        assert scan["keyPattern"] == dict(TYPE_CREATED), json.dumps(answer, default=str)
    # and it answers: charges minus refunds of the month, per service
    expected: dict[int, int] = {}
    for doc in docs:
        if doc["type"] in ("charge", "refund") and month.start <= doc["created_at"] < month.end:
            sign = 1 if doc["type"] == "charge" else -1
            expected[int(doc["service_id"])] = expected.get(int(doc["service_id"]), 0) + sign * int(doc["amount"])
    assert sorted(await ctx.reports.totals("2026-09")) == sorted((f"service {s}", t) for s, t in expected.items())
    assert expected and any(doc["type"] == "refund" for doc in docs)


async def test_the_consoles_transaction_lookup_reads_the_id_index(ctx: Context) -> None:
    await create_history_indexes(ctx.mongo)
    await insert(ctx.mongo, ledger(300, users=(1, 2, 3)))
    store = LedgerStore(ctx.mongo)
    explained = await store.transaction_cursor(150).explain()
    plan = explained["queryPlanner"]["winningPlan"]
    names = [stage["stage"] for stage in stages(plan)]
    assert "COLLSCAN" not in names and "SORT" not in names, plan
    assert names[-1] == "IDHACK" or any(s.get("keyPattern") == {"_id": 1} for s in stages(plan)), plan
    assert (await store.transaction(150) or {}).get("_id") == 150
    assert await store.transaction(301) is None


async def test_the_consoles_order_lookup_reads_service_order(ctx: Context) -> None:
    await create_history_indexes(ctx.mongo)
    docs = ledger(300, users=(1, 2, 3))
    for doc in docs:
        if doc["type"] in ("reserve", "charge", "release", "refund"):
            doc["service_id"], doc["order_id"] = Int64(int(doc["_id"]) % 3 + 1), Int64(int(doc["_id"]) % 5 + 1)
    await insert(ctx.mongo, docs)
    store = LedgerStore(ctx.mongo)
    explained = await store.order_cursor(2, 4, 101).explain()
    plan = explained["queryPlanner"]["winningPlan"]
    names, [scan] = scans(plan)
    assert names in RECORDED, plan
    assert scan["keyPattern"] == dict(SERVICE_ORDER), plan
    assert all(stage["limitAmount"] == 101 for stage in stages(plan) if stage["stage"] == "SORT"), plan
    expected = [d["_id"] for d in docs if d.get("service_id") == 2 and d.get("order_id") == 4]
    assert expected and [d["_id"] for d in await store.order_transactions(2, 4, 101)] == expected
    assert len(await store.order_transactions(2, 4, 3)) == 3
