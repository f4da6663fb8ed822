"""The router, the token check and /openapi.json agree: for every route and method, the roles the served
document states are exactly the roles whose tokens get past the check (admin always), and a route the
document serves without a token needs none. Batch operations are held to their own endpoint's roles."""

from __future__ import annotations

import re
from typing import Any

import pytest

from billing.api.routes import OPERATION_ROUTES
from billing.core.roles import ANY_ROLE, Role
from billing.ledger.service import OPERATIONS
from tests.support.api import TEST_TOKENS, Api

# One token per role (tests/support/api.py).
TOKEN_OF_ROLE = {Role(roles[0]): token for token, roles in TEST_TOKENS.items() if len(roles) == 1}
STATED = re.compile(r"^Roles: (.+?) \(admin may do everything\)\.")


def stated_roles(operation: dict[str, Any]) -> frozenset[str]:
    """The roles an operation of the OpenAPI document states; empty when it needs no token."""
    if operation["security"] == []:
        return frozenset()
    found = STATED.match(operation.get("description", ""))
    assert found, operation
    return ANY_ROLE if found.group(1) == "any role" else frozenset(found.group(1).split(", "))


def concrete(template: str) -> str:
    return re.sub(r"\{[^}]*\}", "1", template.replace("{month}", "2026-11"))


async def answer(api: Api, method: str, path: str, token: str | None) -> tuple[int, str | None]:
    """Status and problem code (None for any other answer) of a request the check lets through or refuses."""
    body = {} if method in ("POST", "PUT") else None  # refused by validation after the check: nothing changes
    response = await api.request(method, path, body, token=token)
    problem = response.json if response.content_type.startswith("application/problem+json") else None
    return response.status, problem["code"] if problem else None


REFUSED = ("unauthenticated", "forbidden")  # the token check's answers


def test_there_is_a_test_token_for_every_role() -> None:
    assert set(TOKEN_OF_ROLE) == set(Role)


async def test_every_route_lets_in_exactly_the_roles_its_document_states(api: Api) -> None:
    document = (await api.get("/openapi.json", token=None)).json
    checked = 0
    for template, item in document["paths"].items():
        for method, operation in item.items():
            method, path, roles = method.upper(), concrete(template), stated_roles(operation)
            status, code = await answer(api, method, path, None)
            if roles:
                assert (status, code) == (401, "unauthenticated"), (method, template)
            else:
                assert code not in REFUSED, (method, template, status)
            for role, token in TOKEN_OF_ROLE.items():
                status, code = await answer(api, method, path, token)
                if not roles or role in roles or role == Role.ADMIN:
                    assert code not in REFUSED, (method, template, role, status)
                else:
                    assert (status, code) == (403, "forbidden"), (method, template, role)
            checked += 1
    assert checked >= 18


@pytest.mark.parametrize("op", sorted(OPERATIONS))
async def test_a_batch_operation_lets_in_exactly_the_roles_of_its_endpoint(api: Api, op: str) -> None:
    document = (await api.get("/openapi.json", token=None)).json
    endpoint = document["paths"][OPERATION_ROUTES[op].template]["post"]
    roles = stated_roles(endpoint)
    for role, token in TOKEN_OF_ROLE.items():
        response = await api.post("/v1/batch", {"operations": [{"op": op}]}, token=token)
        (result,) = response.json["results"]
        if role in roles or role == Role.ADMIN:
            assert result["status"] != 403, (op, role, result)
        else:
            assert (result["status"], result["body"]["code"]) == (403, "forbidden"), (op, role)
