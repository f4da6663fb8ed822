"""The web console for support agents and accountants: its pages, session, interface text and page state.

Owns: HTML under /console. May import: billing.core, billing.infra, billing.ledger (keys), billing.views,
and billing.api (the handler base and auth) — never the other way round.
"""
