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


def pytest_configure(config):
    """The fast tier is compile-bound (hundreds of tiny programs, each run once or twice), so it
    skips XLA:CPU's LLVM optimisation passes: ~30% less compile time, same IEEE arithmetic (no
    fast-math either way). JAX reads XLA_FLAGS when its backend starts, after this hook. The
    full suite keeps the default level: its training runs and subprocesses execute real work."""
    if _fast_only(config):
        os.environ["XLA_FLAGS"] += " --xla_backend_optimization_level=0"


def pytest_ignore_collect(collection_path, config):
    """Under `-m fast`, other test modules are not even imported (their imports of experiments,
    notebooks and TFDS cost seconds of collection)."""
    if _fast_only(config) and collection_path.suffix == ".py":
        name = collection_path.stem
        if name.startswith("test_") and name not in FAST_MODULES:
            return True
    return None


def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.module.__name__.rsplit(".", 1)[-1] in FAST_MODULES:
            item.add_marker(pytest.mark.fast)
