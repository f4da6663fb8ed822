"""The projection: the outbox stream in Redis to the `transactions` ledger in MongoDB.

Owns: the projector (consumer group), the MongoDB ledger store (the only module that names collections),
the history watermark, the sequence check, and recovery (reconcile, rebuild) with its commands.
May import: billing.core, billing.infra, billing.ledger.
"""
