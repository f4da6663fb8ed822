"""The aggregation pipelines MongoDB runs, read from reports/ (one file per pipeline) and bound to their inputs.

A pipeline file is JSON after a leading comment block: the lines before the first one that is neither blank
nor starts with `//` are the header (what the pipeline computes, its inputs, its output, the index it needs)
and are dropped; the rest must be strict JSON (no further comments, no trailing commas). An input is written
in place as `{"$param": "<name>"}`; `bind()` replaces each with a typed Python value inside a copy of the
parsed stages, so no value ever passes through JSON text. A placeholder left unbound would reach MongoDB
as the unknown operator `$param` and fail there, so `bind()` insists on every input, and on no other.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from functools import cache
from typing import Any

from bson.decimal128 import Decimal128

from billing.infra.data_files import data_dir

PARAM = "$param"
# Numbers and times only. A string could not be bound safely everywhere: inside an aggregation
# expression a string starting with "$" reads as a field path, not as a value.
ParamValue = datetime | int | Decimal128


PIPELINES_DIR = data_dir("reports", "revenue.jsonc")
SUFFIX = ".jsonc"


class PipelineError(ValueError):
    """A pipeline file that cannot be read, or a bind() with missing, unknown or untyped inputs."""


def strip_header(text: str) -> tuple[str, str]:
    """(header, body): the leading `//` comment block (blank lines allowed) and the JSON that follows it."""
    lines = text.splitlines(keepends=True)
    index = 0
    while index < len(lines) and (not lines[index].strip() or lines[index].lstrip().startswith("//")):
        index += 1
    header = "".join(line.lstrip().removeprefix("//") for line in lines[:index] if line.strip())
    return header, "".join(lines[index:])


def _params(node: Any, found: set[str], where: str) -> None:
    if isinstance(node, dict):
        if PARAM in node:
            name = node[PARAM]
            if len(node) != 1 or not isinstance(name, str) or not name:
                raise PipelineError(f'{where}: a placeholder is exactly {{"{PARAM}": "<name>"}}, got {node!r}')
            found.add(name)
            return
        for value in node.values():
            _params(value, found, where)
    elif isinstance(node, list):
        for value in node:
            _params(value, found, where)


def _substitute(node: Any, values: dict[str, ParamValue]) -> Any:
    if isinstance(node, dict):
        if PARAM in node:
            return values[node[PARAM]]
        return {key: _substitute(value, values) for key, value in node.items()}
    if isinstance(node, list):
        return [_substitute(value, values) for value in node]
    return node  # JSON scalars are immutable: shared with the parsed stages safely


@dataclass(frozen=True)
class Pipeline:
    """One parsed pipeline file: its stages with placeholders, the names of its inputs and its header."""

    name: str
    stages: list[dict[str, Any]]
    params: frozenset[str]
    header: str

    def bind(self, **values: ParamValue) -> list[dict[str, Any]]:
        """The stages with every `{"$param": name}` replaced by values[name]; a new structure on each call."""
        missing = self.params - values.keys()
        unknown = values.keys() - self.params
        if missing or unknown:
            raise PipelineError(f"pipeline {self.name}: missing inputs {sorted(missing)}, unknown {sorted(unknown)}")
        for key, value in values.items():
            if not isinstance(value, ParamValue):
                raise PipelineError(f"pipeline {self.name}: input {key} is a {type(value).__name__}")
        stages: list[dict[str, Any]] = _substitute(self.stages, values)
        return stages


def parse_pipeline(name: str, text: str) -> Pipeline:
    """A pipeline from a file's text (see the module docstring for the format)."""
    header, body = strip_header(text)
    try:
        stages = json.loads(body)
    except json.JSONDecodeError as exc:
        raise PipelineError(f"pipeline {name}: not JSON after the header: {exc}") from None
    if not isinstance(stages, list) or not all(isinstance(stage, dict) and len(stage) == 1 for stage in stages):
        raise PipelineError(f"pipeline {name}: must be a list of stages, each an object with one operator")
    found: set[str] = set()
    _params(stages, found, f"pipeline {name}")
    return Pipeline(name=name, stages=stages, params=frozenset(found), header=header)


@cache
def load_pipeline(name: str) -> Pipeline:
    """reports/<name>.jsonc, parsed once per process."""
    path = PIPELINES_DIR / f"{name}{SUFFIX}"
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise PipelineError(f"pipeline {name}: cannot read {path}: {exc}") from None
    return parse_pipeline(name, text)
