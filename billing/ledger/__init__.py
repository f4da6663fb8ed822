"""The write side: the service layer for money movements and the runner of the Lua scripts in lua/.

Owns: the only Redis key layout of the ledger (`scripts.RedisKeys`), script loading and calls, idempotency
records, and which store failures mean "retry". May import: billing.core, billing.infra.
"""
