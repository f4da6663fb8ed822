"""Billing service: users' money over HTTP, Redis Lua for balances, MongoDB for history."""
