"""Benchmarks (``make bench``): figures measured against real processes, not CI tests."""
