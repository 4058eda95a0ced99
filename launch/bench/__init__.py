"""Benchmarks: `python launch/bench/<name>.py` (scoring, kernels, selection); each prints its numbers."""
