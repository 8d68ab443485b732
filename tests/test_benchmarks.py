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
    "route_resolved",
    "macs",
    "ratio_to_own",
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
    auto = next(r for r in records if r["route"] == "auto")
    assert set(auto["measured_order"]) == set(auto["predicted_order"]) >= {"jacrev"}
    assert auto["auto_over_fastest"] > 0
    assert "tiny" in bench.format_table(records)
    assert bench.machine_slug().split("-")[0] in ("cpu", "gpu", "tpu", "cuda", "rocm")


def test_tables_render_ratios_from_records():
    from benchmarks import tables

    def rec(model, route, ms, resolved=None, **extra):
        return {
            "model": model,
            "route": route,
            "route_resolved": resolved or route,
            "batch": 128,
            "ms_per_step": ms,
            "ratio_to_plain": ms / 4.0,
            "speedup_vs_torch": 40.0 / ms,
            "gflop": 0.5,
            "gflops_achieved": 50.0,
            "temp_bytes": 2e6,
            "compile_s": 0.3,
            "note": "",
            **extra,
        }

    records = [
        rec("mlp-784-256-32", "plain", 4.0),
        rec("mlp-784-256-32", "auto", 16.0, "structured/gram"),
        rec("mlp-784-256-32", "jacrev", 80.0),
    ]
    route = tables.route_table(records)
    assert "| mlp-784-256-32 | auto (structured/gram) | 16.00 | 4.00 | 2.5 |" in route
    head = tables.headline_table(records)
    # torch and hutchinson rows are absent: shown as a dash, never as a number
    assert "| 784→256→32 | 4.0 | 16.0 (structured/gram) | 4.00 | 20.0 | — | — |" in head
    sweep = [{**r, "sweep_axis": "k", "sweep_value": 32} for r in records]
    row = "| k | 32 | mlp-784-256-32 | 128 | 4.0 | 16.0 (structured/gram) | 80.0 | 4.00 | 5.00 |"
    assert row in tables.sweep_table(sweep)


def test_memory_budget_chunks_or_skips_with_a_note(standard_promotion, monkeypatch):
    # The budget is what the process may hold; count only the step's temporaries here.
    monkeypatch.setattr(bench, "rss_mb", lambda: 0.0)
    spec = bench.ModelSpec((64,), (32,))
    x = jax.random.uniform(jax.random.key(0), (8, 64))
    full = bench.JaxRunner(spec, "jacrev", x)
    need_mb = bench.TEMP_FACTOR * full.temp_bytes / 1e6  # what a step is budgeted at
    chunked = bench.JaxRunner(spec, "jacrev", x, max_memory_mb=0.9 * need_mb)
    assert chunked.chunk_size is not None and chunked.chunk_size < 8
    assert bench.TEMP_FACTOR * chunked.temp_bytes / 1e6 <= 0.9 * need_mb
    assert f"chunk_size {chunked.chunk_size}" in chunked.note
    full.step()
    chunked.step()  # the same penalty, chunk by chunk
    np.testing.assert_allclose(chunked.penalty, full.penalty, rtol=1e-5)
    records = bench.run_model(
        "tiny", spec, ("plain",), batch=8, reps=1, max_memory_mb=1e-9, log=lambda _: None
    )
    (plain,) = records
    assert plain["ms_per_step"] is None and plain["reps"] == 0
    assert plain["note"].startswith("skipped: XLA temps") and "no chunked form" in plain["note"]
    assert plain["note"] in bench.format_table(records)
    from benchmarks import tables

    assert plain["note"] in tables.route_table(records)
