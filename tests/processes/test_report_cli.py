"""`billing report --month M [--output FILE]` writes the same CSV the signed link serves."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest

import billing.infra.stores
from billing.bootstrap import Context
from billing.cli import main
from tests.support.api import Api
from tests.support.report_docs import Ledger
from tests.support.servers import MongoWireServer
from tests.support.terminal import run_in_terminal

NOV = datetime(2025, 11, 15, 12, 0, tzinfo=UTC)


@pytest.fixture
def redis_backend() -> str:
    return "fakeredis"


async def http_csv(api: Api, month: str) -> bytes:
    link = await api.get("/v1/reports/revenue?" + urlencode({"month": month}), token="tok-accounting")
    answer = await api.get(link.json["url"][len(api.base_url) :], token=None)
    assert answer.status == 200
    return answer.body


async def fill(ctx: Context) -> None:
    await ctx.projector.drain()  # the projector's indexes first (see test_reports_api.ledger)
    ledger = Ledger(ctx.mongo)
    await ledger.name(1, "Продвижение")
    await ledger.name(2, 'Ads; "Pro"')
    await ledger.charge(1, 123_450, NOV)
    await ledger.partial(2, 1_000, 999, NOV)
    await ledger.charge(3, 7, NOV)


def cli_env(mongo_url: str, db_name: str, tmp_path: Path) -> dict[str, str]:
    env = {
        **os.environ,
        "BILLING_MONGO_URL": mongo_url,
        "BILLING_MONGO_DB": db_name,
        "BILLING_REDIS_URL": "redis://127.0.0.1:1/0",  # not used by the report
        "BILLING_REPORTS_DIR": str(tmp_path / "cli-reports"),
        "BILLING_CONFIG_FILE": str(tmp_path / "none.env"),
    }
    env.pop("BILLING_REPORT_TZ", None)
    return env


def run_cli(mongo_url: str, db_name: str, tmp_path: Path, *args: str) -> subprocess.CompletedProcess[bytes]:
    """The installed `billing` command in a child process, configured only by the environment."""
    command = [sys.executable, "-m", "billing", "report", *args]
    return subprocess.run(command, env=cli_env(mongo_url, db_name, tmp_path), capture_output=True, timeout=60)


@pytest.mark.parametrize("mongo_backend", ["secantus"], indirect=True)
async def test_cli_writes_the_http_csv_from_a_real_mongodb(
    api: Api, ctx: Context, mongo_db: Any, mongo_server: MongoWireServer, tmp_path: Path
) -> None:
    await fill(ctx)
    expected = await http_csv(api, "2025-11")
    assert expected.startswith(b"service;total\r\n")
    out = tmp_path / "out" / "revenue.csv"
    to_file = await asyncio.to_thread(
        run_cli, mongo_server.url, mongo_db.name, tmp_path, "--month", "2025-11", "--output", str(out)
    )
    assert to_file.returncode == 0, to_file.stderr
    assert out.read_bytes() == expected
    to_stdout = await asyncio.to_thread(run_cli, mongo_server.url, mongo_db.name, tmp_path, "--month", "2025-11")
    assert to_stdout.stdout == expected
    assert to_stdout.stderr == b""  # piped: no progress
    with_bom = await asyncio.to_thread(
        run_cli, mongo_server.url, mongo_db.name, tmp_path, "--month", "2025-11", "--bom"
    )
    assert with_bom.stdout == b"\xef\xbb\xbf" + expected
    bad = await asyncio.to_thread(run_cli, mongo_server.url, mongo_db.name, tmp_path, "--month", "2025-13")
    assert bad.returncode == 2
    assert b"month must be YYYY-MM" in bad.stderr
    assert bad.stdout == b""


@pytest.mark.parametrize("mongo_backend", ["mongomock"], indirect=True)
async def test_cli_on_the_embedded_store_writes_the_http_csv(
    api: Api, ctx: Context, mongo_db: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    await fill(ctx)
    expected = await http_csv(api, "2025-11")
    monkeypatch.setattr(billing.infra.stores, "connect_mongo", lambda settings: mongo_db)
    monkeypatch.setenv("BILLING_MONGO_URL", "mongodb://127.0.0.1:1/")  # stands for the store patched in
    monkeypatch.setenv("BILLING_REPORTS_DIR", str(tmp_path / "cli-reports"))
    out = tmp_path / "revenue.csv"
    with pytest.raises(SystemExit) as exited:
        await asyncio.to_thread(main, ["report", "--month", "2025-11", "--output", str(out)])
    assert exited.value.code == 0
    assert out.read_bytes() == expected
    with pytest.raises(SystemExit) as exited:
        await asyncio.to_thread(main, ["report", "--month", "nope", "--output", str(tmp_path / "bad.csv")])
    assert exited.value.code == 2
    assert not (tmp_path / "bad.csv").exists()


def test_cli_refuses_the_embedded_store(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.delenv("BILLING_MONGO_URL", raising=False)
    with pytest.raises(SystemExit) as exited:
        main(["report", "--month", "2025-11"])
    assert exited.value.code == 2
    assert "BILLING_MONGO_URL" in capsys.readouterr().err


@pytest.mark.parametrize("mongo_backend", ["secantus"], indirect=True)
async def test_cli_shows_progress_on_a_terminal(
    ctx: Context, mongo_db: Any, mongo_server: MongoWireServer, tmp_path: Path
) -> None:
    await fill(ctx)
    command = [sys.executable, "-m", "billing", "report", "--month", "2025-11"]
    env = cli_env(mongo_server.url, mongo_db.name, tmp_path)
    code, screen = await asyncio.to_thread(run_in_terminal, command, env)
    assert code == 0, screen
    assert "report 2025-11: reading the MongoDB ledger" in screen
    assert "service;total" in screen and "Продвижение;1234.50" in screen
