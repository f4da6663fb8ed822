"""Benchmarks: the floor app, the service under wrk, batch throughput, the report."""
