"""The geometry benchmark's harness on a tiny model: complete records, agreeing exact routes."""

import jax
import numpy as np
import pytest

from benchmarks import geometry as bench


@pytest.fixture
def standard_promotion():
    """optax.adam mixes a Python float with an int32 count (see test_benchmarks.py)."""
    jax.config.update("jax_numpy_dtype_promotion", "standard")
    yield
    jax.config.update("jax_numpy_dtype_promotion", "strict")


def test_geometry_harness_records_and_exact_routes_agree(standard_promotion):
    routes = ("plain", "rcae/auto", "rcae/jacrev")
    records = bench.run_shape(
        "tiny", bench.QUICK_SHAPES["tiny-16-8-3"], batch=4, reps=1, routes=routes, log=str
    )
    assert [r["route"] for r in records] == list(routes)
    for r in records:
        assert r["ms_per_step"] > 0 and r["reps"] == 1 and r["k"] == 3
    by_route = {r["route"]: r for r in records}
    assert by_route["plain"]["ratio_to_plain"] == 1.0
    np.testing.assert_allclose(
        by_route["rcae/auto"]["terms"]["reconstruction_contractive"],
        by_route["rcae/jacrev"]["terms"]["rcae"],
        rtol=1e-4,
    )
    assert by_route["rcae/auto"]["ratio_to_exact"] == 1.0
    assert "rcae/jacrev" in bench.format_table(records)
