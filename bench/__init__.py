"""Benchmarks: the floor app, the wrk scripts and the runner behind `make bench`."""
