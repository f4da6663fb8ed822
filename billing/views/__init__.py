"""The read side: a user's history with signed keyset cursors, the monthly revenue report with its signed
links and CSV, and the rendering of ledger records (money strings, times, descriptions).

Owns: what support and accounting read. May import: billing.core, billing.infra, billing.ledger (keys),
billing.projection (the store and the watermark).
"""
