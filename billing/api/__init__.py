"""The HTTP API: Tornado handlers (one module per resource), bearer-token auth, JSON bodies, the route table
and the OpenAPI document.

Owns: HTTP (statuses, headers, problem+json rendering). Handlers never name a Redis key or a MongoDB
collection. May import: billing.core, billing.infra, billing.ledger, billing.projection, billing.views,
billing.webhooks.
"""
