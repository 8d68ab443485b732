"""Benchmarks of aecore (timed outside the unit tests): `python -m benchmarks.jacobian --quick`."""
