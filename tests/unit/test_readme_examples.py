"""Every JSON request example in README.md and docs/*.md (curl ... -d '...') is valid for its route's request schema."""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import orjson
import pytest
from jsonschema import Draft202012Validator

from billing.api.openapi import build_spec
from billing.api.routes import ENDPOINTS

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^```[^\n]*\n(.*?)^```", re.S | re.M)


def curl_examples(text: str) -> list[tuple[str, str, str]]:
    """(METHOD, path, JSON body) of each curl command with -d/--data in a fenced block."""
    found = []
    for block in FENCE.findall(text):
        joined = re.sub(r"\\\n\s*", " ", block)
        for line in joined.splitlines():
            if not line.lstrip().startswith("curl ") or not re.search(r"\s(-d|--data|--data-raw)\s", line):
                continue
            args = shlex.split(line, comments=False)
            method, url, body = "", "", None
            for i, arg in enumerate(args):
                if arg in ("-X", "--request"):
                    method = args[i + 1]
                elif arg in ("-d", "--data", "--data-raw"):
                    body = args[i + 1]
                elif arg.startswith("http://") or arg.startswith("https://") or arg.startswith("$"):
                    url = arg
            assert url and body is not None, f"cannot read this example: {line}"
            url = re.sub(r"^\$\{?\w+\}?", "http://host", url)  # $BASE/v1/... as the docs write it
            found.append((method or "POST", urlsplit(url).path, body))
    return found


def route_of(method: str, path: str) -> tuple[str, str]:
    for m, template in ENDPOINTS:
        pattern = "^" + re.sub(r"\\\{[^}]*\\\}", "[^/]+", re.escape(template)) + "$"
        if m == method and re.match(pattern, path):
            return m, template
    raise AssertionError(f"example for {method} {path}: no such route in the API")


EXAMPLES = [example for doc in DOCS for example in curl_examples(doc.read_text(encoding="utf-8"))]


def test_docs_have_request_examples() -> None:
    readme = curl_examples(DOCS[0].read_text(encoding="utf-8"))
    assert readme, "README.md has no `curl ... -d '...'` examples in fenced blocks"
    assert len(EXAMPLES) > len(readme), "docs/*.md have no `curl ... -d '...'` examples in fenced blocks"


@pytest.mark.parametrize(("method", "path", "body"), EXAMPLES, ids=[f"{m} {p}" for m, p, _ in EXAMPLES])
def test_readme_example_matches_request_schema(method: str, path: str, body: str) -> None:
    spec = build_spec()
    key = route_of(method, path)
    op: dict[str, Any] = spec["paths"][key[1]][method.lower()]
    assert "requestBody" in op, f"{method} {path} takes no body"
    data = orjson.loads(body)
    schema = {**op["requestBody"]["content"]["application/json"]["schema"], "components": spec["components"]}
    errors = [e.message for e in Draft202012Validator(schema).iter_errors(data)]
    assert errors == [], errors
    model = ENDPOINTS[key].request
    assert model is not None
    model.model_validate(data)  # the server's own validation accepts it too


def test_the_parser_reads_continued_lines() -> None:
    text = "```sh\ncurl -s -X PUT http://h/v1/services/7 \\\n  -H 'Content-Type: application/json' \\\n  -d '{\"name\": \"x\"}'\n```\n"
    assert curl_examples(text) == [("PUT", "/v1/services/7", '{"name": "x"}')]
    assert curl_examples(text.replace("http://h", "$BASE"))[0][1] == "/v1/services/7"
