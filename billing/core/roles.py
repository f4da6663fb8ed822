"""The roles a token may hold, named once. admin may do everything."""

from __future__ import annotations

from enum import StrEnum


class Role(StrEnum):
    PAYMENTS = "payments"
    ORDERS = "orders"
    SUPPORT = "support"
    ACCOUNTING = "accounting"
    EVENTS = "events"  # reads the event feed (GET /v1/events)
    ADMIN = "admin"


ROLES: frozenset[str] = frozenset(Role)
ANY_ROLE: frozenset[str] = ROLES  # a route any token may call


def roles(*names: Role) -> frozenset[str]:
    """The roles that may do something: any one of them suffices (and admin always)."""
    return frozenset(names)
