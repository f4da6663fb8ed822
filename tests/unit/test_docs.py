"""README.md and docs/*.md: the API doc matches the OpenAPI routes and error codes, and every link resolves."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from billing.api.openapi import build_spec, is_html_route, normalize
from billing.core.errors import PROBLEMS

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
API_DOC = ROOT / "docs" / "api.md"
DOCS = [README, *sorted((ROOT / "docs").glob("*.md"))]

FENCE = re.compile(r"^```.*?^```", re.S | re.M)
INLINE_CODE = re.compile(r"`[^`\n]*`")
LINK = re.compile(r"\]\(([^)\s]+)\)")
HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*#*\s*$", re.M)
ROUTE = re.compile(r"`(GET|POST|PUT|DELETE|PATCH) (/[^`?\s]*)")


def prose(text: str) -> str:
    """The text outside fenced blocks (where links and headings live)."""
    return FENCE.sub("", text)


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.replace("`", "").strip().lower())
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    seen: dict[str, int] = {}
    out = set()
    for heading in HEADING.findall(prose(path.read_text(encoding="utf-8"))):
        base = slug(heading)
        count = seen.get(base, 0)
        seen[base] = count + 1
        out.add(base if count == 0 else f"{base}-{count}")
    return out


def links(path: Path) -> list[str]:
    return LINK.findall(INLINE_CODE.sub("", prose(path.read_text(encoding="utf-8"))))


def broken_links(path: Path) -> list[str]:
    broken = []
    for target in links(path):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
            continue
        file_part, _, anchor = target.partition("#")
        resolved = (path.parent / file_part).resolve() if file_part else path
        if not resolved.exists():
            broken.append(f"{target}: no such file")
        elif anchor and resolved.suffix == ".md" and anchor not in anchors(resolved):
            broken.append(f"{target}: no such heading")
    return broken


def test_slugs_follow_github() -> None:
    assert slug("Durability: `appendfsync always`") == "durability-appendfsync-always"
    assert slug("MongoDB: the ledger's story") == "mongodb-the-ledgers-story"
    assert slug("A five-minute tour") == "a-five-minute-tour"


def test_the_link_checker_sees_a_broken_link(tmp_path: Path) -> None:
    doc = tmp_path / "a.md"
    (tmp_path / "b.md").write_text("# Here\n")
    doc.write_text("# Top\n[ok](b.md#here) [ok](#top) [web](https://x.org/y)\n[bad](c.md) [bad](b.md#there)\n")
    assert broken_links(doc) == ["c.md: no such file", "b.md#there: no such heading"]


@pytest.mark.parametrize("doc", DOCS, ids=[str(d.relative_to(ROOT)) for d in DOCS])
def test_every_relative_link_resolves(doc: Path) -> None:
    assert broken_links(doc) == []


def documented_routes() -> set[tuple[str, str]]:
    text = API_DOC.read_text(encoding="utf-8")
    return {(method, normalize(re.sub(r"<[^>]*>", "{}", path))) for method, path in ROUTE.findall(text)}


def test_api_doc_names_every_route_of_the_openapi_spec() -> None:
    spec = {(method.upper(), normalize(path)) for path, ops in build_spec()["paths"].items() for method in ops}
    documented = documented_routes()
    assert sorted(spec - documented) == [], "routes of /openapi.json missing from docs/api.md"
    extra = sorted((m, p) for m, p in documented - spec if not is_html_route(p))
    assert extra == [], "docs/api.md names routes that /openapi.json does not have"


def test_api_doc_lists_every_error_code() -> None:
    text = API_DOC.read_text(encoding="utf-8")
    missing = [code for code in PROBLEMS if f"`{code}`" not in text]
    assert missing == []


def test_readme_is_a_front_door() -> None:
    text = README.read_text(encoding="utf-8")
    assert len(text.splitlines()) <= 200
    first_block = FENCE.search(text)
    assert first_block is not None
    commands = [line.split("#")[0].strip() for line in first_block.group(0).splitlines()[1:-1]]
    assert commands == ["make run", "make test"]
    assert "docs/api.md" in text


@pytest.mark.parametrize("doc", DOCS, ids=[str(d.relative_to(ROOT)) for d in DOCS])
def test_docs_point_only_inside_the_repository(doc: Path) -> None:
    text = doc.read_text(encoding="utf-8")
    assert "shared/design" not in text and "../shared" not in text
