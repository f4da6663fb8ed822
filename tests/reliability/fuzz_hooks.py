"""Schemathesis hooks for tests/reliability/test_api_fuzz.py (loaded by file path through SCHEMATHESIS_HOOKS).

Generation: besides what the spec allows, a share (a quarter to a third) of the generated bodies, query
strings, path parameters and Idempotency-Key headers get one value made hostile: whitespace or a newline before or after it, or an
ASCII digit swapped for a look-alike (Arabic-Indic, Persian, full-width, superscript) that int() and
Decimal() would read as that digit.

Checks: `exact_grammar` fails a case whose request holds a value that is not exactly its grammar (judged
here, independently of billing/core/parsing.py) and was answered 2xx (in a batch: an operation answered 2xx).
Such refusals are expected, so the positive-data check's complaint about them is dropped, and only then.
`route_counts` writes the number of test cases per route to $BILLING_FUZZ_COUNTS.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from typing import Any

import schemathesis
from hypothesis import strategies as st

AROUND = [" ", "\t", "\n", "\r\n", "\r", "\x0b", "\x0c", "\x85", "\xa0", "\u2028", "\u3000", "\ufeff"]
LOOKALIKES = {
    digit: [chr(0x0660 + int(digit)), chr(0x06F0 + int(digit)), chr(0xFF10 + int(digit))]
    + (["\u00b9", "\u00b2", "\u00b3"][int(digit) - 1 : int(digit)] if digit in "123" else [])
    for digit in "0123456789"
}
# Header values must be Latin-1 to be sent at all: hostile characters that are.
HEADER_HOSTILE = ["\u00b2", "\u00a0", "\u00e9", "\t", " "]
FREE_TEXT = frozenset({"comment", "service_name", "name"})
IDS = frozenset({"user_id", "service_id", "order_id", "from_user_id", "to_user_id"})

AMOUNT = re.compile(r"[0-9]+(\.[0-9]{1,2})?")
PATH_ID = re.compile(r"[0-9]+(\.0+)?")
MONTH = re.compile(r"[0-9]{4}-[0-9]{2}")
VISIBLE_ASCII = re.compile(r"[!-~]{1,255}")
# Every value of a query string or path here is ASCII without whitespace or control characters; only an
# RFC 3339 time may put one space between date and time.
PLAIN = re.compile(r"[!-~]*")
TIME_WITH_SPACE = re.compile(r"[!-~]{10} [!-~]+")
WEBHOOK_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
WEBHOOK_URL = re.compile(r"https?://[!-~]+")
TRANSACTION_TYPE = re.compile(r"[a-z_]+")


# ---- generation --------------------------------------------------------------------------------------


def hostile(text: str) -> st.SearchStrategy[str]:
    around = st.sampled_from(AROUND)
    options = [around.map(lambda junk: junk + text), around.map(lambda junk: text + junk), st.just(text + "\n")]
    digits = [index for index, char in enumerate(text) if char in LOOKALIKES]
    if digits:
        options.append(
            st.sampled_from(digits).flatmap(
                lambda i: st.sampled_from(LOOKALIKES[text[i]]).map(lambda alike: text[:i] + alike + text[i + 1 :])
            )
        )
    return st.one_of(options)


def _slots(value: Any, path: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    """Where a scalar worth spoiling sits (strings and integers, not free text), in dicts and lists."""
    if isinstance(value, dict):
        for key, item in value.items():
            if key not in FREE_TEXT:
                yield from _slots(item, (*path, key))
    elif isinstance(value, list):
        for index, item in enumerate(value[:5]):
            yield from _slots(item, (*path, index))
    elif isinstance(value, str) or (isinstance(value, int) and not isinstance(value, bool)):
        yield path


def _replaced(value: Any, path: tuple[Any, ...], new: Any) -> Any:
    if not path:
        return new
    copy = dict(value) if isinstance(value, dict) else list(value)
    copy[path[0]] = _replaced(value[path[0]], path[1:], new)
    return copy


def _get(value: Any, path: tuple[Any, ...]) -> Any:
    for key in path:
        value = value[key]
    return value


def spoiled(value: Any) -> st.SearchStrategy[Any]:
    """The value as generated, or with one of its scalars made hostile."""
    slots = list(_slots(value))
    if not slots:
        return st.just(value)
    one = st.sampled_from(slots).flatmap(
        lambda path: hostile(str(_get(value, path))).map(lambda text: _replaced(value, path, text))
    )
    return st.one_of(st.just(value), one)


@schemathesis.hook
def flatmap_body(context: Any, body: Any) -> st.SearchStrategy[Any]:
    return spoiled(body)


# GET /v1/events holds a request open up to `wait` seconds while no event arrives: the fuzzer keeps it to one
# second, so the run is not spent waiting (and no answer outlasts its request timeout).
LONG_POLLS = {"/v1/events": ("wait", 1)}


@schemathesis.hook
def flatmap_query(context: Any, query: Any) -> st.SearchStrategy[Any]:
    path = getattr(context.operation, "path", None)
    if query and path in LONG_POLLS:
        name, longest = LONG_POLLS[path]
        if isinstance(query.get(name), int) and not isinstance(query[name], bool):
            query = {**query, name: min(query[name], longest)}
    return spoiled(query) if query else st.just(query)


@schemathesis.hook
def flatmap_path_parameters(context: Any, path_parameters: Any) -> st.SearchStrategy[Any]:
    return spoiled(path_parameters) if path_parameters else st.just(path_parameters)


@schemathesis.hook
def flatmap_headers(context: Any, headers: Any) -> st.SearchStrategy[Any]:
    key = (headers or {}).get("Idempotency-Key")
    if not isinstance(key, str):
        return st.just(headers)
    # Inside the value: around it, HTTP clients refuse to send whitespace (and servers would take it off).
    bad = st.sampled_from(HEADER_HOSTILE).map(lambda junk: {**headers, "Idempotency-Key": f"k{key}{junk}x"})
    return st.one_of(st.just(headers), bad)


# ---- the oracle ----------------------------------------------------------------------------------------


def body_malformed(value: Any, key: str | None = None) -> list[str]:
    """Values in a JSON body that are not exactly their grammar (free text aside)."""
    out: list[str] = []
    if isinstance(value, dict):
        for name, item in value.items():
            if name not in FREE_TEXT:
                out += body_malformed(item, name)
        return out
    if isinstance(value, list):
        for item in value:
            out += body_malformed(item, key)
        return out
    if key == "amount" and isinstance(value, str) and not AMOUNT.fullmatch(value):
        out.append(f"amount {value!r}")
    elif key in IDS and isinstance(value, str):
        out.append(f"{key} {value!r}")  # ids in bodies are JSON numbers
    elif key == "idempotency_key" and isinstance(value, str) and not VISIBLE_ASCII.fullmatch(value):
        out.append(f"idempotency_key {value!r}")
    elif key == "op" and isinstance(value, str) and not re.fullmatch(r"[a-z]+", value):
        out.append(f"op {value!r}")
    elif key == "url" and isinstance(value, str) and not WEBHOOK_URL.fullmatch(value):
        out.append(f"url {value!r}")
    elif key == "types" and isinstance(value, str) and not TRANSACTION_TYPE.fullmatch(value):
        out.append(f"types {value!r}")
    return out


def text_malformed(name: str, value: Any) -> bool:
    text = str(value)
    if name in IDS:
        return not PATH_ID.fullmatch(text)
    if name in ("from", "to", "at"):
        return not (PLAIN.fullmatch(text) or TIME_WITH_SPACE.fullmatch(text))
    if name == "month":  # a path parameter arrives percent-encoded ("%0B2026-11"): judge its grammar
        return not MONTH.fullmatch(text)
    if name == "name":  # a webhook's name in its path, percent-encoded too
        return not WEBHOOK_NAME.fullmatch(text)
    return not PLAIN.fullmatch(text)


def malformed(case: Any) -> list[str]:
    found = body_malformed(case.body) if isinstance(case.body, dict | list) else []
    for where, values in (("path", case.path_parameters), ("query", case.query)):
        for name, value in (values or {}).items():
            items = value if isinstance(value, list) else [value]
            found += [f"{where} {name}={item!r}" for item in items if text_malformed(name, item)]
    key = (case.headers or {}).get("Idempotency-Key")
    # HTTP takes the optional whitespace around a field value off before anyone sees it (RFC 9110 5.5).
    if isinstance(key, str) and not VISIBLE_ASCII.fullmatch(key.strip(" \t")):
        found.append(f"Idempotency-Key {key!r}")
    return found


def _batch_accepted(case: Any, response: Any) -> list[str]:
    """Malformed operations of a batch that were answered 2xx one by one."""
    operations = case.body.get("operations") if isinstance(case.body, dict) else None
    try:
        results = response.json().get("results") or []
    except ValueError:
        return []
    out = []
    for operation, result in zip(operations or [], results, strict=False):
        bad = body_malformed(operation)
        if bad and isinstance(result, dict) and 200 <= int(result.get("status", 0)) < 300:
            out.append(f"operation {operation!r}: {bad}")
    return out


@schemathesis.check
def exact_grammar(ctx: Any, response: Any, case: Any) -> bool | None:
    """No value that is not exactly its grammar is ever accepted."""
    if not 200 <= response.status_code < 300:
        return None
    # A batch answers 200 as a whole; each operation has its own status.
    batch = case.path == "/v1/batch" and case.method.upper() == "POST"
    found = _batch_accepted(case, response) if batch else malformed(case)
    if found:
        raise AssertionError(f"{response.status_code} for a request with malformed values: {'; '.join(found)}")
    return None


@schemathesis.hook
def filter_failure(context: Any, failure: Any, case: Any, response: Any) -> bool:
    """Keep every failure except the positive-data check's complaint about a 400 for a value made hostile."""
    if failure.code == "ST202" and response is not None and response.status_code == 400:
        return not malformed(case)
    return True


@schemathesis.check
class route_counts:  # noqa: N801 - the check's name in reports
    """Test cases per route (and how many held a malformed value), written to $BILLING_FUZZ_COUNTS."""

    def __init__(self) -> None:
        self.cases: dict[str, set[str]] = {}
        self.spoiled: dict[str, set[str]] = {}

    def after_response(self, ctx: Any, response: Any, case: Any) -> None:
        label = case.operation.label  # the operation's own method (probes of other methods count for it)
        self.cases.setdefault(label, set()).add(case.id)
        if malformed(case):
            self.spoiled.setdefault(label, set()).add(case.id)

    def after_run(self, ctx: Any) -> None:
        target = os.environ.get("BILLING_FUZZ_COUNTS")
        if target:
            counts = {
                label: {"cases": len(ids), "malformed": len(self.spoiled.get(label, ()))}
                for label, ids in sorted(self.cases.items())
            }
            with open(target, "w") as out:
                json.dump(counts, out, indent=1)
