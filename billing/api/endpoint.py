"""The route table's types: a route, the methods it serves, and what each takes, answers and needs."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel

from billing.ledger.service import OperationSpec

NO_AUTH: frozenset[str] = frozenset()


@dataclass(frozen=True)
class Param:
    """A path or query parameter; its schema comes from a type (through pydantic) or is given."""

    name: str
    where: str  # "path" | "query"
    description: str
    schema: Any = None  # a type for TypeAdapter, or a JSON Schema dict
    required: bool = False
    explode: bool = True  # False: an array is one comma-separated value (OpenAPI's style form, explode false)


@dataclass(frozen=True)
class Endpoint:
    """One method of a route: who may call it, what it takes and answers, and what its OpenAPI entry says."""

    summary: str
    roles: frozenset[str]  # any one of them (admin always); empty: no token
    responses: Mapping[int, Any]  # status -> pydantic model, a media type string ("text/csv"), or None (no body)
    request: type[BaseModel] | None = None
    params: tuple[Param, ...] = ()
    errors: tuple[str, ...] = ()  # business problem codes besides the generic ones
    tag: str = "money"
    description: str = ""
    store: bool = True  # touches Redis/MongoDB, so may answer 503 unavailable
    extra: Mapping[str, Any] = field(default_factory=dict)
    also: tuple[str, ...] = ()  # other media types of the success answer, chosen by Accept ("text/csv")


@dataclass(frozen=True)
class Route:
    """One path: its template ({name} for a path parameter), handler and methods. No methods: pages and files
    for people (Swagger UI), served without a token and left out of the API document."""

    template: str
    handler: type[Any]
    methods: Mapping[str, Endpoint]
    operation: OperationSpec | None = None  # the money operation a POST runs
    pattern: str | None = None  # the router's regex, when the template's own ({name} -> one segment) is not it
    args: Mapping[str, Any] = field(default_factory=dict)  # more initialize() arguments for the handler

    @property
    def regex(self) -> str:
        if self.pattern is not None:
            return self.pattern
        literal = re.split(r"\{[^}]*\}", self.template)
        return "([^/]+)".join(re.escape(part) for part in literal)

    def roles(self, method: str) -> frozenset[str]:
        """Who may call this method (any one role; admin always); empty: no token needed."""
        endpoint = self.methods.get(method)
        return endpoint.roles if endpoint is not None else NO_AUTH
