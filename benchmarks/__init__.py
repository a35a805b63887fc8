"""Benchmarks (not timed tests): `python -m benchmarks.<name>`; each has a `--smoke` mode the tests run."""
