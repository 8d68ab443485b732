"""Data-parallel training over 8 virtual CPU devices matches single-device training."""

import jax
import numpy as np
import pytest

from aecore import train
from aecore.models import make_autoencoder
from aecore.objective import Objective


def _fit(data_parallel: bool, batch_size: int = 32):
    x = np.random.default_rng(0).uniform(0, 1, (128, 4, 4, 1)).astype(np.float32)
    cfg = train.TrainConfig(
        num_steps=5,
        batch_size=batch_size,
        learning_rate=1e-2,
        data_parallel=data_parallel,
        progress=False,
    )
    obj = Objective(loss="cross_entropy", contractive=0.1, kl=0.1)
    return train.fit(make_autoencoder((4, 4, 1), hidden=(6,), key=0), obj, x, config=cfg)


def test_data_parallel_step_matches_single_device():
    assert jax.device_count() == 8, "tests/conftest.py should force 8 host devices"
    single, sharded = _fit(False), _fit(True)
    leaves = jax.tree.leaves(sharded.model)
    assert all(len(leaf.sharding.device_set) == 8 for leaf in leaves)
    for u, v in zip(jax.tree.leaves(single.model), leaves, strict=True):
        np.testing.assert_allclose(np.asarray(u), np.asarray(v), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(single.history[-1]["loss"], sharded.history[-1]["loss"], rtol=1e-5)


def test_batch_size_must_divide_by_device_count():
    with pytest.raises(ValueError, match="divisible by the 8 devices, got batch_size 30"):
        _fit(True, batch_size=30)


def test_data_parallel_run_checkpoints_and_resumes(tmp_path):
    x = np.random.default_rng(0).uniform(0, 1, (64, 4, 4, 1)).astype(np.float32)
    obj = Objective(loss="cross_entropy", contractive=0.1)

    def run(num_steps):
        cfg = train.TrainConfig(
            num_steps=num_steps, batch_size=16, data_parallel=True, progress=False
        )
        model = make_autoencoder((4, 4, 1), hidden=(6,), key=0)
        return train.fit(model, obj, x, config=cfg, workdir=str(tmp_path))

    run(3)
    resumed = run(6)
    assert resumed.start_step == 3 and resumed.step == 6
    single = train.fit(
        make_autoencoder((4, 4, 1), hidden=(6,), key=0),
        obj,
        x,
        config=train.TrainConfig(num_steps=6, batch_size=16, progress=False),
    )
    for u, v in zip(jax.tree.leaves(single.model), jax.tree.leaves(resumed.model), strict=True):
        np.testing.assert_allclose(np.asarray(u), np.asarray(v), rtol=1e-5, atol=1e-6)
