"""The composed objective: terms, totals, jit == eager, validation of every field."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from aecore import Objective, losses, make_autoencoder, objective_terms, regularizers

# The objective under jit (one compile per Objective) for the checks of its values; eager
# op-by-op dispatch of a Jacobian objective costs seconds on CPU. jit == eager is its own test.
_terms = jax.jit(objective_terms, static_argnums=3)


# Objectives shared by several tests, so each compiles once (`_terms` caches per Objective).
FULL = Objective(loss="cross_entropy", weight_decay=1e-3, l1=0.01, kl=0.5, rho=0.1, contractive=0.2)
DENOISING_CAE_H = Objective(
    contractive=0.2, higher_order=0.1, corruption="mask", corruption_level=0.3, contractive_probes=0
)


def _setup():
    model = make_autoencoder((4, 4, 1), hidden=(6,), key=0)
    x = jax.random.uniform(jax.random.key(0), (5, 4, 4, 1))
    return model, x


def test_total_is_sum_of_terms_and_terms_match_the_parts():
    model, x = _setup()
    total, terms = _terms(model, x, jax.random.key(1), FULL)
    assert set(terms) == {"reconstruction", "weight_decay", "l1", "kl", "contractive"}
    np.testing.assert_allclose(total, sum(terms.values()), rtol=1e-6)
    h = jax.vmap(model.encode)(x)
    logits = jax.vmap(model.decode_logits)(h)
    np.testing.assert_allclose(
        terms["reconstruction"], jnp.mean(losses.sigmoid_cross_entropy(logits, x)), rtol=1e-6
    )
    np.testing.assert_allclose(
        terms["kl"], regularizers.kl_sparsity(h, rho=0.1, weight=0.5), rtol=1e-6
    )
    np.testing.assert_allclose(
        terms["contractive"],
        jnp.mean(jax.jit(lambda v: regularizers.contractive(model.encode, v, weight=0.2))(x)),
        rtol=1e-6,
    )


def _masked_reconstruction(model, x, k_corrupt, q):
    """The squared-error term by hand: corrupt with k_corrupt, reconstruct the clean x."""
    x_hat = jax.vmap(model)(regularizers.mask_noise(k_corrupt, x, q=q))
    return jnp.mean(losses.squared_error(x_hat, x))


def test_jit_matches_eager():
    model, x = _setup()
    eager = objective_terms(model, x, jax.random.key(2), FULL)[1]
    jitted = _terms(model, x, jax.random.key(2), FULL)[1]
    assert set(jitted) == set(eager)
    for name in eager:
        np.testing.assert_allclose(jitted[name], eager[name], rtol=1e-5, err_msg=name)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(loss="hinge"), "'hinge'"),
        (dict(contractive=-1.0), "-1.0"),
        (dict(weight_decay=-0.01), "-0.01"),
        (dict(rho=1.5), "1.5"),
        (dict(corruption="mask", corruption_level=1.0), "1.0"),
        (dict(corruption="gaussian", corruption_level=-0.2), "-0.2"),
        (dict(jacobian_mode="fast"), "'fast'"),
        (dict(higher_order_samples=0), "0"),
        (dict(contractive_probes=-1), "-1"),
        (dict(contractive_probes=1.5), "1.5"),
        (dict(contractive_probes=True), "True"),
    ],
)
def test_invalid_objective_raises_naming_the_value(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Objective(**kwargs)


def test_denoising_reconstructs_the_clean_target_and_probes_zero_is_exact():
    # Denoising: the corrupted input is reconstructed towards the CLEAN x. contractive_probes=0
    # (the default) gives exactly the terms of the exact objective, drawn with the same keys:
    # corruption from split(key)[0], CAE+H (the second term) from fold_in(split(key)[1], 1).
    model, x = _setup()
    key = jax.random.key(3)
    _, terms = _terms(model, x, key, DENOISING_CAE_H)
    k_corrupt, k_terms = jax.random.split(key)
    k_ho = jax.random.fold_in(k_terms, 1)
    expected = _masked_reconstruction(model, x, k_corrupt, 0.3)
    np.testing.assert_allclose(terms["reconstruction"], expected, rtol=1e-6)

    @jax.jit
    def parts(x, k_ho):
        exact = regularizers.contractive(model.encode, x, weight=0.2)
        ho = regularizers.contractive_higher_order(model.encode, x, k_ho, weight=0.1, sigma=0.1)
        return exact, ho

    exact, ho = parts(x, k_ho)
    np.testing.assert_allclose(terms["contractive"], jnp.mean(exact), rtol=1e-6)
    np.testing.assert_allclose(terms["higher_order"], jnp.mean(ho), rtol=1e-6)


def test_contractive_probes_estimate_is_unbiased_but_not_exact():
    model, x = _setup()
    exact = float(_terms(model, x, jax.random.key(1), FULL)[1]["contractive"])  # weight 0.2
    obj = Objective(contractive=0.2, contractive_probes=1)

    @jax.jit
    def estimate(key):
        return objective_terms(model, x, key, obj)[1]["contractive"]

    values = np.asarray(jax.vmap(estimate)(jax.random.split(jax.random.key(5), 2000)))
    standard_error = values.std(ddof=1) / np.sqrt(len(values))
    assert abs(values.mean() - exact) < 3 * standard_error, (values.mean(), exact)
    # One key gives one draw of the estimate, not the exact value.
    assert np.all(np.abs(values[:10] - exact) > 1e-4 * exact)
    # The estimate takes the contractive term's place; no other term appears.
    terms = jax.eval_shape(
        lambda m, v, k: objective_terms(m, v, k, obj), model, x, jax.random.key(1)
    )[1]
    assert set(terms) == {"reconstruction", "contractive"}


@pytest.mark.parametrize("mode", ["jacrev", "jacfwd"])
def test_chunk_size_reaches_both_jacobian_terms_and_changes_no_value(mode):
    model = make_autoencoder((6,), hidden=(5, 3), activation="tanh", key=0)
    x = jax.random.normal(jax.random.key(1), (7, 6))
    base = dict(contractive=0.3, higher_order=0.2, higher_order_sigma=0.1, jacobian_mode=mode)
    _, whole = _terms(model, x, jax.random.key(2), Objective(**base))
    _, chunked = _terms(model, x, jax.random.key(2), Objective(**base, chunk_size=3))
    for name in ("contractive", "higher_order"):
        np.testing.assert_allclose(chunked[name], whole[name], rtol=1e-6, err_msg=name)

    # chunking is what the higher-order term runs under: its lax.map shows in the program
    def fn(c):
        return objective_terms(model, x, jax.random.key(2), Objective(**base, chunk_size=c))

    jaxpr = str(jax.make_jaxpr(fn, static_argnums=0)(3))
    assert jaxpr.count("scan") >= 2, "chunk_size did not reach both terms"


def test_terms_get_their_keys_by_position_not_by_name():
    # Each term draws from fold_in(split(key)[1], its position in terms()), whatever its name.
    def draw(model, x, x_tilde, h, key):
        return jax.random.uniform(key)

    model, x = _setup()
    key = jax.random.key(4)
    k_terms = jax.random.split(key)[1]
    for names in (("contractive_like", "other"), ("other", "contractive_like")):
        obj = Objective(l1=0.01, extra_terms=[regularizers.Term(n, draw) for n in names])
        terms = _terms(model, x, key, obj)[1]
        for position, name in enumerate(names, start=1):  # l1 is term 0
            want = jax.random.uniform(jax.random.fold_in(k_terms, position))
            np.testing.assert_array_equal(terms[name], want)
