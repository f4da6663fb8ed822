"""The write side: the service layer for money movements and the runner of the Lua scripts in lua/.

Owns: the only Redis key layout of the ledger (`scripts.RedisKeys`), script loading and calls, idempotency
records, what an operation came to in the ledger's terms (`outcomes`, no HTTP), and which store failures mean
"retry". May import: billing.core, billing.infra.
"""
