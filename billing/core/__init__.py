"""Core: what every layer shares. Money conversion (the only one), wire time formats, the strict parsers of
outside input, problem codes, settings, roles, transaction types and their effects, and the request and
response models.

Owns: the facts of the domain that are true whoever asks. May import: nothing else of billing.
"""
