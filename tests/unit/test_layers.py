"""The layout is the design: each sub-package of billing imports only the layers its docstring allows.

The modules at the top of the package (app, bootstrap, cli, commands, server) compose the layers and may
import any of them; no layer imports them.
"""

from __future__ import annotations

import ast
from pathlib import Path

import billing

ROOT = Path(billing.__file__).parent
# Each layer and the layers it may import (itself always).
ALLOWED = {
    "core": set(),
    "infra": {"core"},
    "ledger": {"core", "infra"},
    "projection": {"core", "infra", "ledger"},
    "views": {"core", "infra", "ledger", "projection"},
    "webhooks": {"core", "infra", "ledger", "projection", "views"},
    "api": {"core", "infra", "ledger", "projection", "views", "webhooks"},
    "console": {"core", "infra", "ledger", "projection", "views", "api", "webhooks"},
}
# Known crossings still to be removed.
EXCEPTIONS: set[tuple[str, str]] = {}


def billing_imports(path: Path) -> set[str]:
    """The first package name under billing of every import in a file (`billing.ledger.scripts` -> ledger)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        names: list[str] = []
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + (
                [f"{node.module}.{a.name}" for a in node.names] if node.module == "billing" else []
            )
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        for name in names:
            parts = name.split(".")
            if parts[0] == "billing" and len(parts) > 1:
                found.add(parts[1])
    return found


def test_every_layer_imports_only_what_it_may() -> None:
    broken = []
    for layer, allowed in ALLOWED.items():
        for path in sorted((ROOT / layer).rglob("*.py")):
            rel = path.relative_to(ROOT).as_posix()
            for target in billing_imports(path) - allowed - {layer}:
                if (rel, target) not in EXCEPTIONS:
                    broken.append(f"{rel} imports billing.{target}")
    assert broken == []


def test_the_exceptions_still_exist() -> None:
    """An exception that no longer happens is taken off the list, so the list only shrinks."""
    for rel, target in EXCEPTIONS:
        assert target in billing_imports(ROOT / rel), f"{rel} no longer imports billing.{target}: drop the exception"


def test_every_layer_says_what_it_owns_and_may_import() -> None:
    for layer in ALLOWED:
        doc = ast.get_docstring(ast.parse((ROOT / layer / "__init__.py").read_text(encoding="utf-8"))) or ""
        assert "Owns:" in doc and "May import:" in doc, layer
