"""Thin Tornado handlers, one module per resource."""
