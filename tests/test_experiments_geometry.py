"""Quick modes of exp_score (rCAE and the score) and exp_geometry (decoder geometry), run
in-process (geometry on offline digits), with their checks; and the experiments' own closed
forms and evaluation against independent computations."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np

from aecore import jacobian
from experiments import exp_geometry, exp_score


def _run(module, tmp_path, *extra):
    results = module.main(["--quick", *extra, "--out", str(tmp_path)])
    on_disk = json.loads((tmp_path / "metrics.json").read_text())
    assert set(on_disk) == set(results)
    assert all(c["passed"] for c in results["checks"])
    return results


def test_score_quick(tmp_path):
    results = _run(exp_score, tmp_path)
    mixture = results["densities"]["mixture"]
    assert set(mixture["runs"]) == {"AE", "DAE", "rCAE", "rCAE/hutchinson1"}
    assert all(len(v) == 2 for r in mixture["runs"].values() for v in r.values())
    assert mixture["verdict_relative_error_exact_below_hutchinson1"]["verdict"]
    assert (tmp_path / "score_fields.png").stat().st_size > 1000


def test_geometry_quick(tmp_path):
    results = _run(exp_geometry, tmp_path, "--data", "digits")
    k2 = results["by_k"]["k2"]
    assert set(k2["steps"]) == set(exp_geometry.VARIANTS)
    assert k2["verdict_distortion_exact_irvae1_ae"]["verdict"]
    assert (tmp_path / "geometry.png").stat().st_size > 1000


def test_mixture_score_is_the_gradient_of_its_log_density():
    # Closed-form score against central finite differences of log p (float64).
    d = exp_score.density("mixture")
    x = np.random.default_rng(0).normal(size=(5, 2))

    def log_p(y):
        d2 = np.sum((y[:, None, :] - d.means[None]) ** 2, axis=-1)
        return np.log(np.mean(np.exp(-d2 / (2 * d.std**2)), axis=1))

    eps = 1e-6
    fd = np.stack(
        [(log_p(x + eps * e) - log_p(x - eps * e)) / (2 * eps) for e in np.eye(2)], axis=1
    )
    np.testing.assert_allclose(d.score(x), fd, rtol=1e-6, atol=1e-8)


def test_geometry_evaluation_matches_the_library_metric(x64):
    # The experiment reads G's spectrum from the singular values of J_g; the library forms
    # G = JᵀJ by forward mode. Same distortion and condition number, on a jnp decoder.
    w1 = jax.random.normal(jax.random.key(0), (3, 20), jnp.float64)
    w2 = jax.random.normal(jax.random.key(1), (20, 9), jnp.float64)

    def decode(z):  # [3] -> [9]
        return jax.nn.sigmoid(jnp.tanh(z @ w1) @ w2)

    z = jax.random.normal(jax.random.key(2), (6, 3), jnp.float64)
    got = exp_geometry.geometry(exp_geometry.singular_values(decode, z))
    g = jacobian.pullback_metric(decode, z)
    np.testing.assert_allclose(got["distortion"], 3 * jacobian.relaxed_distortion(g), rtol=1e-10)
    eig = np.linalg.eigvalsh(np.asarray(g))
    want = np.median(eig[:, -1] / eig[:, 0])
    np.testing.assert_allclose(got["median_condition_number"], want, rtol=1e-8)
