"""billing/ uses only the public API of tornado, redis-py, prometheus_client and motor: none of their private
attributes (`_name`) is read, written or overridden, by attribute, by getattr()/setattr()/hasattr() or by import.

The private names are collected from the libraries' own sources (every `self._x`/`cls._x` and every `def _x`
in them), so an upgrade that adds one is checked too. `self._x` is ours unless the class derives (directly or
through classes of ours) from a library class whose own source, or an ancestor's, uses `_x`: then it is the
library's attribute, and is flagged.
"""

from __future__ import annotations

import ast
import functools
import importlib
import inspect
import re
from pathlib import Path

import pytest

LIBRARIES = ("tornado", "redis", "prometheus_client", "motor")
BILLING = Path(__file__).resolve().parents[2] / "billing"
_PRIVATE_USE = re.compile(r"\b(?:self|cls)\.(_[A-Za-z]\w*)|^\s*(?:async\s+)?def\s+(_[A-Za-z]\w*)", re.MULTILINE)
_REFLECTION = {"getattr", "setattr", "hasattr", "delattr"}


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


@functools.cache
def library_private_names() -> frozenset[str]:
    names: set[str] = set()
    for library in LIBRARIES:
        module = importlib.import_module(library)
        assert module.__file__ is not None
        for source in Path(module.__file__).parent.rglob("*.py"):
            names |= _names_in(source.read_text(encoding="utf-8", errors="replace"))
    return frozenset(names)


def _dotted(node: ast.expr) -> list[str] | None:
    parts: list[str] = []
    while isinstance(node, ast.Attribute):
        parts.insert(0, node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        return None
    return [node.id, *parts]


def _names_in(source: str) -> set[str]:
    return {name for found in _PRIVATE_USE.finditer(source) if _private(name := found.group(1) or found.group(2))}


@functools.cache
def _class_private_names(library_class: type) -> frozenset[str]:
    """The private names a library class and its library ancestors use."""
    names: set[str] = set()
    for cls in library_class.__mro__:
        if cls.__module__.split(".")[0] in LIBRARIES:
            names |= _names_in(inspect.getsource(cls))
    return frozenset(names)


class _Module:
    """One module of billing/: what its names are bound to by imports, and its classes' bases."""

    def __init__(self, where: str, tree: ast.Module) -> None:
        self.where = where
        self.tree = tree
        self.imported: dict[str, str] = {}  # local name -> the dotted path it was imported as
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    local = alias.asname or alias.name.split(".")[0]
                    self.imported[local] = alias.name if alias.asname else alias.name.split(".")[0]
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                for alias in node.names:
                    self.imported[alias.asname or alias.name] = f"{node.module}.{alias.name}"

    def library_object(self, node: ast.expr) -> object | None:
        """The library object an expression names (a base class), or None if it is no library's."""
        parts = _dotted(node)
        if parts is None or parts[0] not in self.imported:
            return None
        path = self.imported[parts[0]].split(".") + parts[1:]
        if path[0] not in LIBRARIES:
            return None
        for cut in range(len(path), 0, -1):
            try:
                found: object = importlib.import_module(".".join(path[:cut]))
            except ImportError:
                continue
            for attr in path[cut:]:
                found = getattr(found, attr)
            return found
        return None

    def from_other_module(self, node: ast.expr) -> bool:
        """Whether the expression starts at a module or object imported from outside these libraries (os._exit)."""
        parts = _dotted(node)
        return (
            parts is not None and parts[0] in self.imported and self.imported[parts[0]].split(".")[0] not in LIBRARIES
        )


def _library_bases(modules: list[_Module]) -> dict[str, set[type]]:
    """For each class of billing/ (by name): the library classes it derives from, directly or through ours."""
    bases: dict[str, list[tuple[_Module, ast.expr]]] = {}
    for module in modules:
        for node in ast.walk(module.tree):
            if isinstance(node, ast.ClassDef):
                bases.setdefault(node.name, []).extend((module, base) for base in node.bases)

    @functools.cache
    def of(name: str) -> frozenset[type]:
        found: set[type] = set()
        for module, base in bases.get(name, []):
            library = module.library_object(base)
            if isinstance(library, type):
                found.add(library)
            elif isinstance(base, ast.Name) and base.id != name:
                found |= of(base.id)
        return frozenset(found)

    return {name: set(of(name)) for name in bases}


class _Checker(ast.NodeVisitor):
    """The uses of library private names in one module."""

    def __init__(self, module: _Module, library_bases: dict[str, set[type]]) -> None:
        self.module = module
        self.names = library_private_names()
        self.library_bases = library_bases
        self.classes: list[frozenset[str]] = []  # per enclosing class: the private names its library bases use
        self.found: list[str] = []

    def flag(self, node: ast.AST, what: str) -> None:
        self.found.append(f"{self.module.where}:{getattr(node, 'lineno', 0)}: {what}")

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            parts = alias.name.split(".")
            if parts[0] in LIBRARIES and any(_private(part) for part in parts):
                self.flag(node, f"import {alias.name}")

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        parts = (node.module or "").split(".")
        if parts[0] not in LIBRARIES:
            return
        if any(_private(part) for part in parts):
            self.flag(node, f"from {node.module} import ...")
        for alias in node.names:
            if _private(alias.name):
                self.flag(node, f"from {node.module} import {alias.name}")

    def visit_ClassDef(self, node: ast.ClassDef) -> None:
        names: set[str] = set()
        for library_class in self.library_bases.get(node.name, set()):
            names |= _class_private_names(library_class)
        self.classes.append(frozenset(names))
        for item in node.body:
            if isinstance(item, ast.FunctionDef | ast.AsyncFunctionDef) and item.name in names:
                self.flag(item, f"overrides the library's {item.name}()")
        self.generic_visit(node)
        self.classes.pop()

    def visit_Attribute(self, node: ast.Attribute) -> None:
        if isinstance(node.value, ast.Name) and node.value.id in ("self", "cls") and self.classes:
            if node.attr in self.classes[-1]:  # a private attribute of the library class we derive from
                self.flag(node, f"self.{node.attr}")
        elif node.attr in self.names and not self.module.from_other_module(node.value):
            self.flag(node, f".{node.attr}")
        self.generic_visit(node)

    def visit_Call(self, node: ast.Call) -> None:
        if isinstance(node.func, ast.Name) and node.func.id in _REFLECTION and len(node.args) >= 2:
            name = node.args[1]
            if isinstance(name, ast.Constant) and isinstance(name.value, str) and name.value in self.names:
                self.flag(node, f"{node.func.id}(..., {name.value!r})")
        self.generic_visit(node)


def private_uses(sources: dict[str, str]) -> list[str]:
    modules = [_Module(where, ast.parse(text)) for where, text in sources.items()]
    library_bases = _library_bases(modules)
    found: list[str] = []
    for module in modules:
        checker = _Checker(module, library_bases)
        checker.visit(module.tree)
        found.extend(checker.found)
    return found


def test_the_libraries_private_names_are_known() -> None:
    names = library_private_names()
    for name in ("_headers", "_write_buffer", "_status_code", "_reason", "_reader", "_writer", "_parser"):
        assert name in names, name
    assert "_buckets" in names and "_sum" in names and "_upper_bounds" in names


def test_billing_uses_no_private_attribute_of_these_libraries() -> None:
    sources = {str(path.relative_to(BILLING.parent)): path.read_text() for path in sorted(BILLING.rglob("*.py"))}
    assert private_uses(sources) == []


@pytest.mark.parametrize(
    "source",
    [
        "import tornado.web\nclass H(tornado.web.RequestHandler):\n    def clear(self):\n        self._headers = {}\n",
        "from tornado.web import RequestHandler\nclass A(RequestHandler): pass\n"
        "class B(A):\n    def f(self):\n        self._status_code = 200\n",
        "def f(histogram):\n    return getattr(histogram, '_buckets', None)\n",
        "from redis.asyncio import Connection\nclass C(Connection):\n    def f(self):\n        return self._reader\n",
        "def f(stream):\n    return stream._buffer\n",
        "from redis._parsers import base\n",
        "from tornado.web import RequestHandler\nclass H(RequestHandler):\n    def _execute(self): pass\n",
    ],
)
def test_the_check_finds_each_way_of_reaching_in(source: str) -> None:
    assert private_uses({"sample.py": source}) != []


def test_our_own_private_attributes_are_ours() -> None:
    source = (
        "import asyncio\nclass Mine:\n    def __init__(self):\n        self._reader = None\n        self._buckets = []\n"
        "class P(asyncio.Protocol):\n    def f(self):\n        return self._sum\n"
    )
    assert private_uses({"sample.py": source}) == []
