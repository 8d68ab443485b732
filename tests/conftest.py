"""Test configuration: 8 virtual CPU devices (for sharding tests) and strict JAX promotion.

The XLA flag must be set before JAX initialises its backends, hence at conftest import time.
"""

import atexit
import os
import shutil
import tempfile

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
# The tests are compile-bound (hundreds of small programs, each run a few times; quick training
# runs of tiny models), so XLA:CPU skips its LLVM optimisation passes, here and in every process
# the tests start: the suite took 8.4 min at the default level and 6.3 min at 0 on 2 cores (the
# fast tier 81-112 s and 64-79 s). The arithmetic is the same IEEE arithmetic (no fast-math at
# either level); only the generated code is slower. Set the flag yourself for another level.
if "--xla_backend_optimization_level" not in os.environ["XLA_FLAGS"]:
    os.environ["XLA_FLAGS"] += " --xla_backend_optimization_level=0"
os.environ.setdefault("MPLBACKEND", "Agg")

# One persistent XLA compilation cache per test session, shared with every process the tests
# start (console-script runs, multi-process workers, notebook kernels): without it each of them
# compiles the same train steps and initializers again, which dominated the suite's time. It is
# fresh per session (a clean run pays every first compile once) unless AECORE_TEST_JAX_CACHE
# names a folder to keep across sessions.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    _cache = os.environ.get("AECORE_TEST_JAX_CACHE")
    if not _cache:
        _cache = tempfile.mkdtemp(prefix="aecore-test-jax-cache-")
        atexit.register(shutil.rmtree, _cache, ignore_errors=True)
    os.environ["JAX_COMPILATION_CACHE_DIR"] = _cache
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.05")
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")

import jax  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_numpy_dtype_promotion", "strict")
jax.config.update("jax_numpy_rank_promotion", "raise")


@pytest.fixture
def x64():
    """Float64 for exactness tests; restored afterwards so other tests keep float32."""
    jax.config.update("jax_enable_x64", True)
    yield
    jax.config.update("jax_enable_x64", False)


# The fast tier (`python -m pytest -m fast`): the library's maths, exactness and input errors,
# in-process. Everything else (subprocess CLI runs, kill-and-resume, multi-process runs,
# experiments' quick modes, notebooks, benchmarks, ruff) runs only in the full suite.
FAST_MODULES = {
    "test_losses",
    "test_regularizers",
    "test_objective",
    "test_jacobian",
    "test_models",
    "test_filters",
    "test_stats",
    "test_properties",
}


def _fast_only(config) -> bool:
    return (config.getoption("markexpr", "") or "").strip() == "fast"


def pytest_ignore_collect(collection_path, config):
    """Under `-m fast`, other test modules are not even imported (their imports of experiments,
    notebooks and TFDS cost seconds of collection), unless they mark some tests fast themselves."""
    if _fast_only(config) and collection_path.suffix == ".py":
        name = collection_path.stem
        if name.startswith("test_") and name not in FAST_MODULES:
            if "pytest.mark.fast" not in collection_path.read_text():
                return True
    return None


# The longest tests (15-65 s each on 2 cores, `pytest --durations`, 2026-12-06) go first, longest
# first: xdist deals the first tests out round-robin, so they run side by side from the start
# instead of one of them starting last and running alone while the other workers idle.
LONG_FIRST = (
    "test_experiments_estimators.py::",
    "test_jacobian_engine.py::test_random_",
    "test_multihost.py::",
    "test_estimator_intervals.py::test_intervals_cover_at_their_level[xtrace",
    "test_experiments_b.py::",
    "test_experiments_a.py::",
    "test_exp_classifier_stats.py::",
    "test_exp_edges.py::",
    "test_linear_pca.py::",
)


def _long_rank(item) -> int:
    ranks = [i for i, long in enumerate(LONG_FIRST) if long in item.nodeid]
    return ranks[0] if ranks else len(LONG_FIRST)


def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.module.__name__.rsplit(".", 1)[-1] in FAST_MODULES:
            item.add_marker(pytest.mark.fast)
    items.sort(key=_long_rank)
