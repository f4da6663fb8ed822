"""The aggregation pipelines in reports/: every file loads, says what it needs, and binds its inputs in place."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from bson.int64 import Int64

from billing.infra.pipelines import PIPELINES_DIR, SUFFIX, PipelineError, load_pipeline, parse_pipeline, strip_header
from billing.projection.store import TRANSACTION_INDEXES
from billing.views.report_month import parse_month

ROOT = Path(__file__).resolve().parents[2]
FILES = sorted((ROOT / "reports").glob(f"*{SUFFIX}"))


def test_the_checkout_reads_its_own_reports_dir() -> None:
    assert PIPELINES_DIR == ROOT / "reports"
    assert [path.name for path in FILES] == sorted(path.name for path in (ROOT / "reports").iterdir())
    assert {path.stem for path in FILES} >= {"revenue", "user_sums", "reservation_sums", "last_transaction"}


@pytest.mark.parametrize("path", FILES, ids=[path.stem for path in FILES])
def test_every_pipeline_loads_and_its_header_names_inputs_output_and_index(path: Path) -> None:
    pipeline = load_pipeline(path.stem)
    assert pipeline.stages and pipeline.header.startswith(f" {path.stem}: ")
    fields = dict(re.findall(r"^\s+(Collection|Inputs|Output|Index)\s+(.*)$", pipeline.header, re.M))
    assert set(fields) == {"Collection", "Inputs", "Output", "Index"}, pipeline.header
    inputs = fields["Inputs"]
    declared = set() if inputs == "none" else {name.strip() for name in inputs.split(":", 1)[0].split(",")}
    assert declared == pipeline.params
    index = fields["Index"].split()[0].rstrip(":")
    assert index == "none" or index in dict(TRANSACTION_INDEXES), index


def test_revenue_binds_the_months_bounds_into_its_match() -> None:
    period = parse_month("2026-03", ZoneInfo("Europe/Moscow"))
    stages = load_pipeline("revenue").bind(start=period.start, end=period.end)
    assert stages[0] == {
        "$match": {
            "type": "charge",
            "created_at": {"$gte": datetime(2026, 2, 28, 21, tzinfo=UTC), "$lt": datetime(2026, 3, 31, 21, tzinfo=UTC)},
        }
    }
    assert [next(iter(stage)) for stage in stages] == ["$match", "$group", "$lookup"]
    refunds = load_pipeline("revenue_refunds").bind(start=period.start, end=period.end)
    assert refunds[0] == {"$match": {**stages[0]["$match"], "type": "refund"}}
    assert refunds[1:] == stages[1:]  # the same sums, per service, named the same way


def test_a_bound_pipeline_is_a_fresh_structure_each_time() -> None:
    revenue = load_pipeline("revenue")
    first = revenue.bind(start=datetime(2026, 1, 1, tzinfo=UTC), end=datetime(2026, 2, 1, tzinfo=UTC))
    first[0]["$match"]["type"] = "deposit"
    first[1]["$group"].clear()
    second = revenue.bind(start=datetime(2026, 1, 1, tzinfo=UTC), end=datetime(2026, 2, 1, tzinfo=UTC))
    assert second[0]["$match"]["type"] == "charge" and second[1]["$group"]
    assert revenue.stages[0]["$match"]["created_at"] == {"$gte": {"$param": "start"}, "$lt": {"$param": "end"}}


@pytest.mark.parametrize(
    "values",
    [
        {"start": datetime(2026, 1, 1, tzinfo=UTC)},
        {"start": datetime(2026, 1, 1, tzinfo=UTC), "end": datetime(2026, 2, 1, tzinfo=UTC), "type": 1},
        {"start": "2026-01-01", "end": datetime(2026, 2, 1, tzinfo=UTC)},
        {"start": {"$gt": 0}, "end": datetime(2026, 2, 1, tzinfo=UTC)},
    ],
    ids=["missing", "unknown", "text", "a document"],
)
def test_bind_refuses_missing_unknown_and_untyped_inputs(values: dict[str, Any]) -> None:
    with pytest.raises(PipelineError):
        load_pipeline("revenue").bind(**values)


def test_inputs_without_a_header_or_anywhere_in_the_stages() -> None:
    pipeline = parse_pipeline("t", '[{"$match": {"n": {"$in": [1, {"$param": "a"}]}}}, {"$limit": {"$param": "b"}}]')
    assert pipeline.header == "" and pipeline.params == {"a", "b"}
    assert pipeline.bind(a=Int64(7), b=5) == [{"$match": {"n": {"$in": [1, Int64(7)]}}}, {"$limit": 5}]


def test_the_header_is_the_leading_comment_block_only() -> None:
    header, body = strip_header('// one\n\n  // two: "x"\n[\n  {"$match": {"url": "http://a//b"}}\n]\n')
    assert header == ' one\n two: "x"\n'
    assert body == '[\n  {"$match": {"url": "http://a//b"}}\n]\n'


@pytest.mark.parametrize(
    "text",
    [
        '// h\n[{"$match": {}}] // a trailing comment\n',
        '// h\n[{"$match": {}},]\n',
        '{"$match": {}}',
        '[{"$match": {}, "$limit": 1}]',
        '[{"$match": {"a": {"$param": "x", "b": 1}}}]',
        '[{"$match": {"a": {"$param": 3}}}]',
    ],
    ids=["comment after json", "trailing comma", "not a list", "two operators", "placeholder with more", "unnamed"],
)
def test_malformed_files_are_refused_with_the_pipelines_name(text: str) -> None:
    with pytest.raises(PipelineError, match="pipeline bad"):
        parse_pipeline("bad", text)


def test_a_missing_file_names_the_path() -> None:
    with pytest.raises(PipelineError, match="no_such_pipeline"):
        load_pipeline("no_such_pipeline")
