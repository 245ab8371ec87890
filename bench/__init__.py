"""Benchmarks: each runs the project's way and the naive baseline in one run; the last line is JSON."""
