"""Benchmarks: `python -m bench.run` writes BENCHMARKS.md. Not part of the test run."""
