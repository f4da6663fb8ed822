"""docker-compose.yml, Dockerfile and .env.example: durable Redis, volumes, health, every setting wired."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from billing.config import Settings

ROOT = Path(__file__).resolve().parents[2]
SETTINGS_VARS = sorted(f"BILLING_{name.upper()}" for name in Settings.model_fields)


def compose() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def test_redis_is_durable_with_a_volume() -> None:
    redis = compose()["services"]["redis"]
    command = redis["command"]
    assert command[command.index("--appendonly") + 1] == "yes"
    assert command[command.index("--appendfsync") + 1] == "always"
    assert any(str(v).split(":")[1] == "/data" for v in redis["volumes"])
    assert "redis-cli" in redis["healthcheck"]["test"]


def test_mongo_has_a_volume_and_a_healthcheck() -> None:
    mongo = compose()["services"]["mongo"]
    assert any(str(v).split(":")[1] == "/data/db" for v in mongo["volumes"])
    assert mongo["healthcheck"]["test"]


def test_named_volumes_are_declared() -> None:
    doc = compose()
    used = {str(v).split(":")[0] for s in doc["services"].values() for v in s.get("volumes", [])}
    assert used <= set(doc["volumes"])


def test_app_waits_for_healthy_stores_and_gets_every_setting() -> None:
    app = compose()["services"]["app"]
    assert app["build"] == "."
    assert app["depends_on"] == {
        "redis": {"condition": "service_healthy"},
        "mongo": {"condition": "service_healthy"},
    }
    env = app["environment"]
    assert env["BILLING_REDIS_URL"].startswith("redis://redis:")
    assert env["BILLING_MONGO_URL"].startswith("mongodb://mongo:")
    assert sorted(k for k in env if k in SETTINGS_VARS) == SETTINGS_VARS
    assert ":?" in env["BILLING_TOKENS"] and ":?" in env["BILLING_SECRET"]  # refuses to start without them
    assert int(str(app["stop_grace_period"]).rstrip("s")) > 10  # longer than the server's drain


def test_env_example_covers_what_compose_reads() -> None:
    example = (ROOT / ".env.example").read_text()
    defined = set(re.findall(r"^(BILLING_[A-Z_]+)=", example, re.M))
    text = (ROOT / "docker-compose.yml").read_text()
    referenced = set(re.findall(r"\$\{(BILLING_[A-Z_]+)", text))
    assert referenced <= defined, sorted(referenced - defined)


def test_dockerfile_runs_as_non_root_with_a_healthcheck() -> None:
    text = re.sub(r"\\\n\s*", " ", (ROOT / "Dockerfile").read_text())  # join continued lines
    lines = [line.strip() for line in text.splitlines()]
    users = [line.split()[1] for line in lines if line.startswith("USER ")]
    assert users and users[-1] not in ("root", "0")
    assert any(line.startswith("HEALTHCHECK ") for line in lines)
    cmd = max(i for i, line in enumerate(lines) if line.startswith("CMD "))
    assert cmd > max(i for i, line in enumerate(lines) if line.startswith("USER "))
    assert "serve" in lines[cmd]


def test_operations_doc_configuration_table_lists_every_setting() -> None:
    doc = (ROOT / "docs" / "operations.md").read_text()
    block = doc.split("<!-- section: operations -->", 1)[1].split("<!-- /section: operations -->", 1)[0]
    missing = [var for var in SETTINGS_VARS + ["BILLING_CONFIG_FILE", "BILLING_LOG_LEVEL"] if f"`{var}`" not in block]
    assert missing == []
