"""Each setting's default is written once, in billing/core/config.py; code that takes a setting as an argument
defaults to that, and only billing/projection/store.py names the MongoDB collections."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import billing
from billing.cli import build_parser
from billing.core.config import SERVE_HOST, SERVE_PORT, default
from billing.projection.projector import Projector
from billing.projection.store import SERVICES, TRANSACTIONS

ROOT = Path(billing.__file__).parent


def test_the_projector_defaults_to_the_settings() -> None:
    parameters = inspect.signature(Projector.__init__).parameters
    for argument in ("batch", "block_ms", "claim_idle_ms"):
        assert parameters[argument].default == default(f"projector_{argument}"), argument


def test_serve_defaults_come_from_the_config_module() -> None:
    args = build_parser().parse_args(["serve"])
    assert (args.host, args.port) == (SERVE_HOST, SERVE_PORT)


def test_only_the_ledger_store_names_a_collection() -> None:
    """No `db["transactions"]` or `get_collection("services")` outside billing/projection/store.py."""
    names = {TRANSACTIONS, SERVICES}
    found = []
    for path in sorted(ROOT.rglob("*.py")):
        if path == ROOT / "projection" / "store.py":
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            named = None
            if isinstance(node, ast.Subscript) and isinstance(node.slice, ast.Constant):
                named = node.slice.value
            elif isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "get_collection" and node.args:
                named = getattr(node.args[0], "value", None)
            if named in names:
                found.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert found == []
