"""Benchmarks: each prints what it measured as ratios against a named anchor run in the same script."""
