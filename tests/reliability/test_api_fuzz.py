"""Schemathesis against a live `billing serve` from its own /openapi.json: no 5xx, every answer as documented,
and no value that is not exactly its grammar accepted (tests/reliability/fuzz_hooks.py spoils a share of the
generated values with whitespace, newlines and look-alike digits, and checks the answers).

Short form (default, bounded examples, fixed seed). Long form, with its figures in docs/reliability.md:
`BILLING_FUZZ_EXAMPLES=300 BILLING_FUZZ_SEED=random .venv/bin/pytest -m slow -s tests/reliability/test_api_fuzz.py`.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.support.servers import MongoWireServer, RedisServer
from tests.support.service import BillingProcess

ADMIN_TOKEN = "fuzz-admin-token"
TOKENS = {ADMIN_TOKEN: ["admin"]}
CONFIG = Path(__file__).with_name("schemathesis.toml")
HOOKS = Path(__file__).with_name("fuzz_hooks.py")
SHORT_EXAMPLES = 8
SHORT_SEED = 20261126
LONG_LEAST = 100


@pytest.fixture(scope="module")
def fuzz_service(mongo_server: MongoWireServer) -> Iterator[BillingProcess]:
    redis_server = RedisServer().start()
    service = BillingProcess(
        redis_server.url, mongo_server.url, TOKENS, workers=2, mongo_db=f"fuzz_{uuid.uuid4().hex[:8]}"
    ).start()
    yield service
    service.stop()
    redis_server.stop()
    shutil.rmtree(redis_server.dir, ignore_errors=True)


def run_schemathesis(
    service: BillingProcess, examples: int, seed: int, report_dir: Path, deterministic: bool = False
) -> dict[str, Any]:
    """`st run` with every check; returns its JSON report (figures and failures)."""
    spec = requests.get(service.url + "/openapi.json", timeout=10)
    # Not a skip: without the published spec there is nothing to hold the API to.
    assert spec.status_code == 200, f"GET /openapi.json answered {spec.status_code}: the API publishes no spec"
    report = report_dir / "schemathesis.json"
    command = [
        str(Path(sys.executable).with_name("st")),
        "--config-file",
        str(CONFIG),
        "--no-color",
        "run",
        service.url + "/openapi.json",
        "--header",
        f"Authorization: Bearer {ADMIN_TOKEN}",
        "--checks",
        "all",
        "--max-examples",
        str(examples),
        "--seed",
        str(seed),
        # One worker: with two, hypothesis parses lambda sources from two threads at once and
        # CPython 3.11's ast module fails inside schemathesis ("AST constructor recursion depth mismatch").
        "--workers",
        "1",
        "--report",
        "json",
        "--report-json-path",
        str(report),
        "--output-truncate",
        "false",
    ] + (["--generation-deterministic"] if deterministic else [])
    counts = report_dir / "route_counts.json"
    env = {**os.environ, "SCHEMATHESIS_HOOKS": str(HOOKS), "BILLING_FUZZ_COUNTS": str(counts)}
    done = subprocess.run(command, capture_output=True, text=True, timeout=1800, env=env)
    assert report.exists(), done.stdout[-5000:] + done.stderr[-5000:]
    figures = json.loads(report.read_text())
    figures["output"] = done.stdout
    assert counts.exists(), "the hooks did not run: " + done.stdout[-5000:] + done.stderr[-5000:]
    figures["routes"] = json.loads(counts.read_text())
    figures["spoilable"] = sorted(
        f"{method.upper()} {path}"
        for path, methods in spec.json()["paths"].items()
        for method, operation in methods.items()
        if "requestBody" in operation or any(p.get("in") in ("path", "query") for p in operation.get("parameters", []))
    )
    return figures


def summary(figures: dict[str, Any]) -> str:
    server_errors = sum(f["count"] for f in figures["failures"] if f["code"] == "ST101")
    return (
        f"schemathesis {figures['schemathesis_version']}, seed {figures['seed']}: "
        f"{figures['operations']['tested']} operations, {figures['test_cases']['generated']} test cases, "
        f"{len(figures['failures'])} kinds of failure, 5xx {server_errors}, {figures['running_time']:.0f} s\n"
        + "\n".join(
            f"  {label}: {row['cases']} cases, {row['malformed']} with a malformed value"
            for label, row in figures["routes"].items()
        )
    )


def check(figures: dict[str, Any], least_per_route: int = 1) -> None:
    print("\n" + summary(figures))
    assert figures["operations"]["tested"] == figures["operations"]["selected"] > 0
    assert len(figures["routes"]) == figures["operations"]["selected"], figures["routes"]
    # Every route that takes a body, path or query parameter was sent malformed values too.
    unspoiled = [label for label in figures["spoilable"] if not figures["routes"].get(label, {}).get("malformed")]
    assert figures["spoilable"] and not unspoiled, (unspoiled, figures["routes"])
    thin = {label: row for label, row in figures["routes"].items() if row["cases"] < least_per_route}
    assert not thin, thin
    assert not figures["errors"], (figures["errors"], figures["output"][-30000:])
    assert figures["exit_code"] == 0, figures["output"][-30000:]


def test_api_conforms_to_its_openapi_spec(fuzz_service: BillingProcess, tmp_path: Path) -> None:
    # The CI form is deterministic so that a run is reproducible; the long form explores at random.
    check(run_schemathesis(fuzz_service, SHORT_EXAMPLES, SHORT_SEED, tmp_path, deterministic=True))


@pytest.mark.slow
def test_long_fuzz_run(fuzz_service: BillingProcess, tmp_path: Path) -> None:
    examples = int(os.environ.get("BILLING_FUZZ_EXAMPLES", "0"))
    if examples <= 0:
        pytest.skip("long form: set BILLING_FUZZ_EXAMPLES (e.g. 300)")
    raw_seed = os.environ.get("BILLING_FUZZ_SEED", "random")
    seed = random.randrange(2**31) if raw_seed == "random" else int(raw_seed)
    # Every route, parameterless ones included (their headers vary), gets at least 100 test cases.
    check(run_schemathesis(fuzz_service, examples, seed, tmp_path), least_per_route=min(examples, LONG_LEAST))
