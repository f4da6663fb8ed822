"""Webhooks: the event feed pushed to other services' URLs, signed, in feed order, retried until acknowledged.

Owns: the webhook definitions and delivery state (in Redis, keys named by RedisKeys), the URL rule, and the
dispatcher every `billing serve` worker runs. May import: billing.core, billing.infra, billing.ledger (keys),
billing.projection (the lease scripts), billing.views (the event feed, the one source of event order).
"""
