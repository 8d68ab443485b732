"""The `linear` config's training (L-BFGS, full batch) reaches PCA's subspace at a 5% eigengap
on a linear autoencoder the user writes, and resumes bit-identically (L-BFGS state included)."""

import dataclasses
import os
import shutil

import jax
import numpy as np
import pytest
from flax import nnx

import aecore
from aecore import evaluate, train
from aecore.configs import linear
from aecore.run import RunConfig


def small_gap_data(n: int, d: int, k: int, ratio: float, seed: int = 0) -> np.ndarray:
    """[n, d] centred data whose covariance (1/n) has eigenvalues 4 … 1 (the top k), then
    1/ratio … 0.1: λ_k / λ_{k+1} = ratio exactly, in a random basis."""
    rng = np.random.default_rng(seed)
    z = rng.standard_normal((n, d))
    q, _ = np.linalg.qr(z - z.mean(axis=0))  # orthonormal columns, each of mean 0
    lam = np.concatenate([np.geomspace(4.0, 1.0, k), np.geomspace(1.0 / ratio, 0.1, d - k)])
    basis, _ = np.linalg.qr(rng.standard_normal((d, d)))
    return (q * np.sqrt(lam * n) @ basis.T).astype(np.float32)


class UserLinear(nnx.Module):
    def __init__(self, d_in: int, d_out: int, rngs: nnx.Rngs):
        self.fc = nnx.Linear(d_in, d_out, rngs=rngs)

    def __call__(self, x):  # ONE example [d_in] -> [d_out]
        return self.fc(x)


def _user_model(d: int, k: int):
    """A linear autoencoder the user writes with nnx.Linear (not aecore's MLP)."""
    rngs = nnx.Rngs(0)
    return aecore.Autoencoder(UserLinear(d, k, rngs), UserLinear(k, d, rngs), output="identity")


def _leaves(tree):
    return [np.asarray(v) for v in jax.tree.leaves(tree)]


def test_linear_config_reaches_pca_at_a_five_percent_eigengap_and_resumes(tmp_path):
    run = RunConfig.of(linear.get_config())
    k = run.model.hidden[-1]
    x = small_gap_data(200, 12, k, 1.05)
    spectrum = np.linalg.eigvalsh(np.cov(x.astype(np.float64).T, bias=True))[::-1]
    np.testing.assert_allclose(spectrum[k - 1] / spectrum[k], 1.05, rtol=1e-5)
    x = x / np.sqrt(x.shape[0])  # the config's "pca" normalization (the data is centred)
    assert np.max(evaluate.pca_angles(_user_model(12, k), x)) > 0.5  # random weights
    # The config's objective, optimizer (L-BFGS) and full batch; 1000 of its 5000 steps
    # (measured on this set: 0.0007 rad after 500 steps, 4e-5 after 1000) keep it short.
    config = dataclasses.replace(
        run.train, num_steps=1000, checkpoint_every=900, eval_every=0, progress=False
    )
    wd = str(tmp_path / "run")
    full = train.fit(_user_model(12, k), run.objective, x, config=config, workdir=wd)
    assert np.max(evaluate.pca_angles(full.model, x)) <= 0.05
    error = float(np.mean(np.sum((evaluate.reconstruct(full.model, x) - x) ** 2, axis=1)))
    np.testing.assert_allclose(error, evaluate.pca_reconstruction_error(x, x, k), rtol=1e-4)
    # Resume from step 900: the L-BFGS memory and line-search state come back bit for bit.
    shutil.rmtree(os.path.join(wd, "checkpoints", "1000"))
    resumed = train.fit(_user_model(12, k), run.objective, x, config=config, workdir=wd)
    assert resumed.start_step == 900 and resumed.step == 1000
    for a, b in zip(_leaves(full.model), _leaves(resumed.model), strict=True):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(_leaves(full.opt_state), _leaves(resumed.opt_state), strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.fast
def test_lbfgs_needs_the_full_batch_and_no_schedule():
    with pytest.raises(ValueError, match="needs the full batch .* got batch_size=64"):
        train.TrainConfig(optimizer="lbfgs", batch_size=64)
    with pytest.raises(ValueError, match="lr_schedule must be 'constant', got 'cosine'"):
        train.TrainConfig(optimizer="lbfgs", batch_size=None, lr_schedule="cosine")
