"""The route table (billing/api/routes.py) is the only place that says which paths, methods and roles exist."""

from __future__ import annotations

import ast
from pathlib import Path

import tornado.web

import billing
from billing.api.routes import OPERATION_ROUTES, ROUTES
from billing.ledger.service import OPERATIONS, request_fingerprint

ROOT = Path(billing.__file__).parent


def test_each_handler_serves_exactly_its_methods_in_the_table() -> None:
    for route in ROUTES:
        if not route.methods:  # pages and files for people
            continue
        served = {
            method.upper()
            for method in ("get", "post", "put", "delete", "patch")
            if getattr(route.handler, method) is not getattr(tornado.web.RequestHandler, method)
        }
        assert served == set(route.methods), route.template


def test_each_money_operation_has_one_route() -> None:
    assert sorted(OPERATION_ROUTES) == sorted(OPERATIONS)
    templates = [route.template for route in ROUTES]
    assert len(templates) == len(set(templates))


def test_no_module_but_the_route_table_states_roles_or_api_paths() -> None:
    """Handlers take their roles from their route; a `roles = ...` in a handler would be a second source."""
    for path in sorted((ROOT / "api" / "handlers").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ClassDef):
                names = {
                    t.id for n in node.body if isinstance(n, ast.Assign) for t in n.targets if isinstance(t, ast.Name)
                }
                assert not names & {"roles", "route_name"}, f"{path.name}: {node.name}"


# What idempotency records written so far hold for these requests: a retry after a deploy must still match.
RECORDED = {
    "deposit": (
        {"user_id": 1, "amount": "1.5", "comment": "c"},
        "bd5491747f30a4a11e4652867332d4ec788c35811fb347ec6b697307546c2aaf",
    ),
    "withdrawal": ({"user_id": 2, "amount": 3}, "d095f8dff111ce47dda008348a5a3fc8a4999a86948735694dac465c0239e44d"),
    "transfer": (
        {"from_user_id": 1, "to_user_id": 2, "amount": "0.01"},
        "81a27d6173f1c89faee70c9fe9e5dca679a47aa2647dd3dee52527bf0eee42a1",
    ),
    "reserve": (
        {"user_id": 1, "service_id": 2, "order_id": 3, "amount": "4"},
        "7ad3111e98f8e01ff3fb8306e56d0168a9417f4b025d1ea773d27fe7e8412768",
    ),
    "recognize": (
        {"user_id": 1, "service_id": 2, "order_id": 3, "amount": "4"},
        "1727165fb1a66a4be6854739788fa7f178533ff29f29f77736bdf976c33cb367",
    ),
    "cancel": (
        {"user_id": 1, "service_id": 2, "order_id": 3},
        "0cd8dc5c56a69b7a76b1e999d724274535cf39b828e08319864eb79bcc3e3dfa",
    ),
    "refund": (
        {"user_id": 1, "service_id": 2, "order_id": 3, "amount": "4"},
        "1df25350cb66b96532d3cd4d4c964b5eda914d9268a9996c1b31470e51633fde",
    ),
}


def test_request_fingerprints_do_not_depend_on_the_routes() -> None:
    assert set(RECORDED) == set(OPERATIONS)
    for name, (fields, recorded) in RECORDED.items():
        spec = OPERATIONS[name]
        assert request_fingerprint(spec, spec.model.model_validate(fields)) == recorded, name
