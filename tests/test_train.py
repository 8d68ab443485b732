"""Tests of the training loop: determinism, resume, divergence, checkpoints, metric files."""

import json
import os
import shutil

import jax
import numpy as np
import pytest

from aecore import checkpoint, train
from aecore.models import make_autoencoder
from aecore.objective import Objective

SHAPE = (4, 4, 1)


def _data(n=96, seed=0):
    rng = np.random.default_rng(seed)
    return rng.uniform(0, 1, (n, *SHAPE)).astype(np.float32)


def _model(hidden=(6,)):
    return make_autoencoder(SHAPE, hidden=hidden, key=0)


def _config(**kw):
    base = dict(num_steps=12, batch_size=16, learning_rate=1e-2, log_every=2, progress=False)
    return train.TrainConfig(**{**base, **kw})


OBJ = Objective(loss="cross_entropy", contractive=0.1)


def _leaves(model):
    return [np.asarray(x) for x in jax.tree.leaves(model)]


def test_same_seed_gives_identical_parameters():
    x = _data()
    a = train.fit(_model(), OBJ, x, config=_config())
    b = train.fit(_model(), OBJ, x, config=_config())
    for u, v in zip(_leaves(a.model), _leaves(b.model), strict=True):
        np.testing.assert_array_equal(u, v)
    assert [r["step"] for r in a.history] == list(range(2, 13, 2))
    assert a.history[-1]["loss"] < a.history[0]["loss"]


def test_resume_matches_uninterrupted_run(tmp_path):
    x, x_test = _data(), _data(32, seed=1)
    full = train.fit(_model(), OBJ, x, config=_config(num_steps=12), x_test=x_test)

    wd = str(tmp_path / "run")
    first = train.fit(_model(), OBJ, x, config=_config(num_steps=6, checkpoint_every=3), workdir=wd)
    assert first.start_step == 0 and first.step == 6
    assert checkpoint.latest_step(os.path.join(wd, "checkpoints")) == 6
    second = train.fit(
        _model(), OBJ, x, config=_config(num_steps=12, eval_every=4), x_test=x_test, workdir=wd
    )
    assert second.start_step == 6 and second.step == 12
    for u, v in zip(_leaves(full.model), _leaves(second.model), strict=True):
        np.testing.assert_allclose(u, v, rtol=1e-6, atol=1e-7)
    # The history spans both parts, once each; the file holds the same records.
    assert [r["step"] for r in second.history] == list(range(2, 13, 2))
    with open(os.path.join(wd, "metrics.jsonl")) as f:
        records = [json.loads(line) for line in f]
    assert records == second.history
    assert "eval_reconstruction" in records[-1] and "contractive" in records[-1]
    assert np.isclose(records[-1]["eval_reconstruction"], full.history[-1]["eval_reconstruction"])
    assert os.listdir(os.path.join(wd, "tb"))

    # A finished run does nothing more.
    again = train.fit(_model(), OBJ, x, config=_config(num_steps=12), workdir=wd)
    assert again.start_step == 12 and again.step == 12
    for u, v in zip(_leaves(again.model), _leaves(second.model), strict=True):
        np.testing.assert_array_equal(u, v)


def test_checkpoints_keep_the_last_n(tmp_path):
    wd = str(tmp_path)
    train.fit(
        _model(), OBJ, _data(), config=_config(checkpoint_every=2, keep_checkpoints=2), workdir=wd
    )
    with checkpoint.Checkpointer(os.path.join(wd, "checkpoints")) as ckpt:
        assert ckpt.all_steps() == [10, 12]
    # Atomic writes: no temporary directories are left behind.
    assert all("tmp" not in d for d in os.listdir(os.path.join(wd, "checkpoints")))


def test_huge_learning_rate_diverges():
    obj = Objective(loss="squared_error")
    model = make_autoencoder(SHAPE, hidden=(6,), activation="identity", output="identity", key=0)
    cfg = _config(num_steps=200, optimizer="sgd", learning_rate=1e6)
    with pytest.raises(train.TrainingDiverged, match=r"non-finite values at step \d+"):
        train.fit(model, obj, _data(), config=cfg)


def test_checkpoint_of_another_shape_is_a_clear_error(tmp_path):
    wd = str(tmp_path)
    train.fit(_model(), OBJ, _data(), config=_config(num_steps=2), workdir=wd)
    with pytest.raises(ValueError, match=r"checkpoint \(16, 6\) vs model \(16, 8\)"):
        train.fit(_model(hidden=(8,)), OBJ, _data(), config=_config(num_steps=4), workdir=wd)


def test_corrupted_checkpoint_is_an_error_not_a_reinit(tmp_path):
    wd = str(tmp_path)
    train.fit(_model(), OBJ, _data(), config=_config(num_steps=2), workdir=wd)
    shutil.rmtree(os.path.join(wd, "checkpoints", "2", "model"))
    with pytest.raises(checkpoint.CheckpointError, match="no intact checkpoint .* missing"):
        train.fit(_model(), OBJ, _data(), config=_config(num_steps=4), workdir=wd)


def test_batch_size_larger_than_data_is_rejected():
    with pytest.raises(ValueError, match="batch_size 200 exceeds the 96"):
        train.fit(_model(), OBJ, _data(), config=_config(batch_size=200))


def test_fit_rejects_bad_data_before_any_step():
    import numpy as np
    import pytest

    from aecore import Objective, make_autoencoder
    from aecore.train import TrainConfig, fit

    model = make_autoencoder((4,), hidden=(2,), key=0)
    config = TrainConfig(num_steps=2, batch_size=2, progress=False)
    x = np.full((4, 4), 0.5, np.float32)
    x_real = x.copy()
    x_real[0, 0] = -3.0
    with pytest.raises(ValueError, match=r"cross-entropy.*\[-3, 0\.5\]"):
        fit(model, Objective(loss="cross_entropy"), x_real, config=config)
    x_nan = x.copy()
    x_nan[1, 2] = np.nan
    with pytest.raises(ValueError, match=r"x_train contains 1 non-finite.*\(1, 2\)"):
        fit(model, Objective(), x_nan, config=config)
    with pytest.raises(ValueError, match="x_test contains"):
        fit(model, Objective(), x, x_test=x_nan, config=config)


def test_cosine_schedule_decays_the_step_to_zero():
    import jax
    import jax.numpy as jnp
    import numpy as np
    import pytest

    from aecore.train import TrainConfig, make_optimizer

    config = TrainConfig(num_steps=10, learning_rate=0.1, lr_schedule="cosine", optimizer="sgd")
    opt = make_optimizer(config)
    params = jnp.zeros(1)
    state = opt.init(params)
    steps = []
    for _ in range(11):
        with jax.numpy_dtype_promotion("standard"):  # optax mixes int32 counts and floats
            update, state = opt.update(jnp.ones(1), state, params)
        steps.append(float(-update[0]))
    np.testing.assert_allclose([steps[0], steps[5], steps[10]], [0.1, 0.05, 0.0], atol=1e-7)
    with pytest.raises(ValueError, match="'linear'"):
        TrainConfig(lr_schedule="linear")


def test_guarded_step_keeps_the_input_state_once_unhealthy():
    import jax.numpy as jnp
    import optax

    opt = optax.sgd(0.1)
    step = train.make_train_step(OBJ, opt, donate=False, guard=True)
    model, x = _model(), jnp.asarray(_data(16))
    state = train.init_optimizer(opt, model)
    moved, _, ok = step(model, state, x, jax.random.key(0), jnp.asarray(True))
    kept, _, not_ok = step(model, state, x, jax.random.key(0), jnp.asarray(False))
    assert bool(ok["finite"]) and not bool(not_ok["finite"])
    pairs = zip(_leaves(moved), _leaves(model), strict=True)
    assert not all(np.array_equal(a, b) for a, b in pairs)
    for a, b in zip(_leaves(kept), _leaves(model), strict=True):
        np.testing.assert_array_equal(a, b)


def test_callable_batches_resume_bit_identically(tmp_path):
    x = _data()

    def batches(start):  # the batches of steps start, start + 1, ...
        return (train.batch_at(x, t, batch_size=16, seed=0) for t in range(start, 10**6))

    full = train.fit(_model(), OBJ, batches, config=_config())
    wd = str(tmp_path)
    train.fit(_model(), OBJ, batches, config=_config(num_steps=6, checkpoint_every=3), workdir=wd)
    resumed = train.fit(_model(), OBJ, batches, config=_config(), workdir=wd)
    assert resumed.start_step == 6
    for a, b in zip(_leaves(full.model), _leaves(resumed.model), strict=True):
        np.testing.assert_array_equal(a, b)
    # ... and equal to the array form, which draws the same batches.
    array = train.fit(_model(), OBJ, x, config=_config())
    for a, b in zip(_leaves(full.model), _leaves(array.model), strict=True):
        np.testing.assert_array_equal(a, b)
