"""The roles a token may hold. admin may do everything."""

ROLES = frozenset({"payments", "orders", "support", "accounting", "admin"})
