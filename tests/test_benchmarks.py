"""The benchmark harness on a tiny model: complete records and agreeing routes (no timings)."""

import jax
import numpy as np
import pytest

from benchmarks import jacobian as bench

FIELDS = (
    "model",
    "route",
    "batch",
    "ms_per_step",
    "ratio_to_plain",
    "compile_s",
    "temp_bytes",
    "memory_kind",
    "gflop",
    "gflops_achieved",
    "penalty",
    "reps",
    "note",
)


@pytest.fixture
def standard_promotion():
    """optax.adam's bias correction mixes a Python float with an int32 count, which the strict
    promotion of conftest.py rejects; the benchmark runs under JAX's default (standard)."""
    jax.config.update("jax_numpy_dtype_promotion", "standard")
    yield
    jax.config.update("jax_numpy_dtype_promotion", "strict")


def test_harness_records_have_every_field_and_exact_routes_agree(standard_promotion):
    spec = bench.ModelSpec((16,), (8, 4))
    routes = ("plain", "auto", "structured", "jacrev", "hutchinson", "torch_jacrev")
    records = bench.run_suite({"tiny": spec}, routes, batch=8, reps=2, warmup=1, log=lambda _: None)
    expected = set(bench.applicable_routes(spec, routes))
    if not bench.torch_available():
        expected.discard("torch_jacrev")
    assert {r["route"] for r in records} == expected
    for r in records:
        for field in FIELDS:
            assert field in r, (r["route"], field)
        assert r["ms_per_step"] > 0 and r["reps"] == 2
    plain = next(r for r in records if r["route"] == "plain")
    assert plain["ratio_to_plain"] == 1.0
    exact = {r["route"]: r["penalty"] for r in records if r["route"] not in ("plain", "hutchinson")}
    ref = exact["jacrev"]
    for route, value in exact.items():
        np.testing.assert_allclose(value, ref, rtol=1e-4, err_msg=route)
    assert "tiny" in bench.format_table(records)
    assert bench.machine_slug().split("-")[0] in ("cpu", "gpu", "tpu", "cuda", "rocm")
