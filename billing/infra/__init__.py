"""Infrastructure: connections to Redis and MongoDB (real servers or the embedded fakes), pre-encoded RESP for
the hot paths, the aggregation pipelines in reports/ (loaded and bound), Prometheus metrics, the access log and
the stopping of background tasks.

Owns: how the service talks to its stores and reports on itself. May import: billing.core.
"""
