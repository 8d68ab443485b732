"""A model the user writes (nnx layers with Dropout and BatchNorm, plain jnp functions) through
every public function: fit with an own term and an optax chain, checkpoint, bit-identical
resume, every aecore.evaluate function, and the one-line errors of the one-example convention."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from evaluation_checks import check_curve_and_summary
from flax import nnx

import aecore
from aecore import evaluate, models, regularizers, train

D, K, N = 16, 4, 96


class MyEncoder(nnx.Module):
    code_activation = "sigmoid"  # lets evaluate.saturation pick its rule

    def __init__(self, rngs: nnx.Rngs):
        self.fc1 = nnx.Linear(D, 12, rngs=rngs)
        self.drop = nnx.Dropout(0.3, rngs=rngs)
        self.fc2 = nnx.Linear(12, K, rngs=rngs)

    def hidden(self, x):  # [D] -> [12], the layer an own contractive term penalizes
        return jnp.tanh(self.fc1(x))

    def __call__(self, x):  # ONE example [D] -> [K]
        return jax.nn.sigmoid(self.fc2(self.drop(self.hidden(x))))


class MyDecoder(nnx.Module):
    def __init__(self, rngs: nnx.Rngs):
        self.fc = nnx.Linear(K, D, rngs=rngs)

    def __call__(self, h):  # the code only
        return self.fc(h)


def _model(seed=0):
    rngs = nnx.Rngs(seed, dropout=seed + 1)
    return aecore.Autoencoder(MyEncoder(rngs), MyDecoder(rngs), output="sigmoid")


def _data(n=N, seed=0):
    rng = np.random.default_rng(seed)
    return rng.uniform(0, 1, (n, D)).astype(np.float32)


def code_l2(model, x, x_tilde, h, key):  # an own penalty: per-example values [B]
    return jnp.sum(h**2, axis=1)


OBJ = aecore.Objective(
    loss="cross_entropy",
    contractive=0.05,
    extra_terms=(
        regularizers.Term("code_l2", code_l2, 0.01),
        regularizers.contractive_term(
            0.01, layer=lambda m, x: m.encoder.hidden(x), name="cae_hidden"
        ),
    ),
)
OPT = optax.chain(optax.clip_by_global_norm(1.0), optax.adam(1e-2))


def _config(**kw):
    base = dict(num_steps=12, batch_size=16, log_every=2, progress=False)
    return train.TrainConfig(**{**base, **kw})


def _leaves(model):
    return [
        np.asarray(jax.random.key_data(x) if jnp.issubdtype(x.dtype, jax.dtypes.prng_key) else x)
        for x in jax.tree.leaves(model)
    ]


def test_done_when_user_model_with_dropout_trains_resumes_and_evaluates(tmp_path):
    x, x_test = _data(), _data(32, seed=1)
    full = train.fit(_model(), OBJ, x, config=_config(), optimizer=OPT, x_test=x_test)
    assert {"code_l2", "cae_hidden", "contractive", "reconstruction"} <= set(full.history[-1])
    assert full.history[-1]["loss"] < full.history[0]["loss"]  # it trains
    # Killed after 6 steps (checkpointed), then resumed: bit-identical to the uninterrupted run.
    wd = str(tmp_path / "run")
    train.fit(
        _model(),
        OBJ,
        x,
        config=_config(num_steps=6, checkpoint_every=3),
        optimizer=OPT,
        x_test=x_test,
        workdir=wd,
    )
    resumed = train.fit(
        _model(seed=5), OBJ, x, config=_config(), optimizer=OPT, x_test=x_test, workdir=wd
    )
    assert resumed.start_step == 6 and resumed.step == 12
    for a, b in zip(_leaves(full.model), _leaves(resumed.model), strict=True):
        np.testing.assert_array_equal(a, b)
    assert [r["loss"] for r in resumed.history] == [r["loss"] for r in full.history]

    # Every aecore.evaluate function on the trained user model.
    m = resumed.model
    codes = evaluate.encode(m, x_test)
    assert codes.shape == (32, K)
    x_hat = evaluate.reconstruct(m, x_test)
    eval_m = models.eval_mode(m)
    np.testing.assert_allclose(x_hat, jax.vmap(eval_m)(x_test), rtol=1e-6)  # Dropout off
    err = evaluate.reconstruction_error(m, x_test, loss="cross_entropy")
    logits = jax.vmap(lambda v: eval_m.decode_logits(eval_m.encode(v)))(x_test)
    np.testing.assert_allclose(
        err, np.mean(aecore.losses.sigmoid_cross_entropy(logits, x_test)), rtol=1e-5
    )
    norms = evaluate.jacobian_norms(m, x_test)
    jac = jax.vmap(jax.jacrev(eval_m.encode))(x_test)  # independent: [32, K, D]
    np.testing.assert_allclose(norms, np.sqrt(np.sum(np.asarray(jac) ** 2, axis=(1, 2))), rtol=1e-5)
    spectrum = evaluate.jacobian_spectrum(m, x_test, max_examples=5)
    np.testing.assert_allclose(np.sqrt(np.sum(spectrum**2, axis=1)), norms[:5], rtol=1e-5)
    sat = evaluate.saturation(m, x_test)
    assert sat == pytest.approx(np.mean((codes < 0.05) | (codes > 0.95)))
    assert 0.0 <= evaluate.noise_ratio(m, x_test, sigma=0.1, seed=0)
    assert evaluate.psnr(x_hat, x_test).shape == (32,)
    y, y_test = np.arange(N) % 2, np.arange(32) % 2
    probe = evaluate.linear_probe(evaluate.encode(m, x), y, codes, y_test)
    assert 0.0 <= probe["accuracy"] <= 1.0
    assert 0.0 <= evaluate.precision_at_k(evaluate.encode(m, x), y, codes, y_test, k=3) <= 1.0
    angles = evaluate.pca_angles(m, x)
    assert angles.shape == (K,) and np.all((angles >= 0) & (angles <= np.pi / 2 + 1e-9))
    basis = evaluate.decoder_basis(m, K)  # the linear decoder's kernel, read from its Jacobian
    np.testing.assert_allclose(basis, np.asarray(m.decoder.fc.kernel[...]).T, rtol=1e-6)
    assert evaluate.principal_angles(basis, basis).max() < 1e-6
    assert evaluate.pca_reconstruction_error(x, x_test, K) > 0
    summary = check_curve_and_summary(m, x, x_test, y, y_test, OBJ)
    assert {
        "reconstruction_error",
        "mean_jacobian_norm",
        "saturation",
        "linear_probe_accuracy",
    } <= set(summary)


def test_dropout_is_active_in_training_and_off_in_eval():
    model, x = _model(), jnp.asarray(_data(8))
    enc = lambda m, v: m.encode(v)  # noqa: E731
    a, _ = models.apply_batch(enc, model, x, key=jax.random.key(0))
    b, _ = models.apply_batch(enc, model, x, key=jax.random.key(1))
    assert not np.allclose(a, b)  # train mode: masks drawn from the step key
    a2, _ = models.apply_batch(enc, model, x, key=jax.random.key(0))
    np.testing.assert_array_equal(a, a2)  # ... deterministically
    e = models.eval_mode(model)
    np.testing.assert_array_equal(jax.vmap(e.encode)(x), models.apply_batch(enc, e, x)[0])


def test_only_params_are_differentiated_and_other_state_is_carried():
    class BNEncoder(nnx.Module):
        def __init__(self, rngs):
            self.fc = nnx.Linear(D, K, rngs=rngs)
            self.bn = nnx.BatchNorm(K, axis_name=models.BATCH_AXIS, rngs=rngs)

        def __call__(self, x):
            return jax.nn.sigmoid(self.bn(self.fc(x)))

    model = aecore.Autoencoder(BNEncoder(nnx.Rngs(0)), MyDecoder(nnx.Rngs(1)), output="sigmoid")
    before = np.asarray(model.encoder.bn.mean[...])
    result = train.fit(
        model,
        aecore.Objective(loss="cross_entropy"),
        _data(),
        config=_config(num_steps=3),
        optimizer=optax.sgd(0.1),
    )
    after = result.model.encoder.bn.mean[...]
    assert not np.allclose(before, after)  # running statistics updated in train mode
    x = jnp.asarray(_data(8))
    h = jax.vmap(jax.nn.sigmoid)(jax.vmap(result.model.encoder.fc)(x))
    assert h.shape == (8, K)
    opt_state = train.init_optimizer(optax.adam(1e-3), model)
    n_params = len(jax.tree.leaves(nnx.state(model, nnx.Param)))
    assert len(jax.tree.leaves(opt_state)) == 2 * n_params + 1  # mu, nu per Param, one count


def test_plain_function_encoder_and_iterable_batches_and_full_batch():
    w = jax.random.normal(jax.random.key(0), (D, K)) * 0.1

    class Linear(nnx.Module):
        def __init__(self):
            self.w = nnx.Param(w)

        def __call__(self, x):
            return jnp.tanh(x @ self.w[...])

    model = aecore.Autoencoder(Linear(), lambda h: h @ w.T, output="identity")
    x = _data()
    batches = (x[i % 6 * 16 : i % 6 * 16 + 16] for i in range(100))
    result = train.fit(
        model,
        aecore.Objective(contractive=0.1),
        batches,
        config=_config(num_steps=5),
        optimizer=optax.sgd(0.05),
    )
    assert result.step == 5 and len(result.history) == 3
    short = train.fit(
        model,
        aecore.Objective(),
        iter([x[:16], x[16:32]]),
        config=_config(num_steps=5),
        optimizer=optax.sgd(0.05),
    )
    assert short.step == 2  # the iterable ran out: training ended early
    full = train.fit(
        model,
        aecore.Objective(),
        x,
        config=_config(num_steps=2, batch_size=None),
        optimizer=optax.sgd(0.05),
    )
    step = train.make_train_step(aecore.Objective(), optax.sgd(0.05), donate=False)
    m, _, _ = step(
        model,
        train.init_optimizer(optax.sgd(0.05), model),
        jnp.asarray(x[train.epoch_order(0, 0, N)]),
        jax.random.fold_in(jax.random.key(0), 0),
    )
    m, _, _ = step(
        m,
        train.init_optimizer(optax.sgd(0.05), model),
        jnp.asarray(x[train.epoch_order(0, 1, N)]),
        jax.random.fold_in(jax.random.key(0), 1),
    )
    np.testing.assert_allclose(full.model.encoder.w[...], m.encoder.w[...], rtol=1e-6)


class BatchEncoder(nnx.Module):  # written for batches [B, D]: the classic mistake
    def __init__(self):
        self.w = nnx.Param(jnp.ones((D, K)))

    def __call__(self, x):
        return jnp.einsum("bd,dk->bk", x, self.w[...])


@pytest.mark.parametrize(
    "encoder, decoder, match",
    [
        (
            BatchEncoder(),
            MyDecoder(nnx.Rngs(0)),
            r"ONE example of shape \(16,\).*written for batches",
        ),
        (
            lambda x: x[:K],
            lambda h: jnp.zeros(D + 1),
            r"code of shape \(4,\) to shape \(17,\).*\(16,\)",
        ),
        (nnx.Linear(D + 2, K, rngs=nnx.Rngs(0)), MyDecoder(nnx.Rngs(0)), r"\(16,\).*\(18,\)"),
        (lambda x: jnp.ones((2, K)), MyDecoder(nnx.Rngs(0)), r"code vector \[d_z\], got \(2, 4\)"),
    ],
)
def test_one_example_convention_errors_are_one_line(encoder, decoder, match):
    model = aecore.Autoencoder(encoder, decoder, output="identity")
    x = _data(16)
    for call in (
        lambda: train.fit(model, aecore.Objective(), x, config=_config(num_steps=1)),
        lambda: aecore.objective_terms(
            model, jnp.asarray(x), jax.random.key(0), aecore.Objective()
        ),
        lambda: evaluate.encode(model, x),
    ):
        with pytest.raises((TypeError, ValueError), match=match) as err:
            call()
        assert "\n" not in str(err.value)


def test_term_errors_name_the_problem():
    with pytest.raises(ValueError, match="unique.*'code_l2'"):
        aecore.Objective(extra_terms=(regularizers.Term("code_l2", code_l2),) * 2)
    with pytest.raises(ValueError, match="reserved"):
        regularizers.Term("loss", code_l2)
    with pytest.raises(ValueError, match="weight must be a finite number >= 0"):
        regularizers.Term("t", code_l2, -1.0)
    bad = aecore.Objective(extra_terms=(regularizers.Term("t", lambda *a: jnp.ones((3, 2))),))
    with pytest.raises(
        ValueError, match=r"term 't' must return .* shape \(8,\) .* got shape \(3, 2\)"
    ):
        aecore.objective_terms(_model(), jnp.asarray(_data(8)), jax.random.key(0), bad)
    with pytest.raises(TypeError, match="optax.GradientTransformation"):
        train.fit(_model(), OBJ, _data(), config=_config(), optimizer="adam")
    with pytest.raises(TypeError, match="saturation needs the code activation of encoder Linear"):
        evaluate.saturation(
            aecore.Autoencoder(
                nnx.Linear(D, K, rngs=nnx.Rngs(0)), MyDecoder(nnx.Rngs(0)), output="identity"
            ),
            _data(),
        )


def test_user_term_enters_total_with_its_weight(x64=None):
    model, x, key = _model(), jnp.asarray(_data(8)), jax.random.key(3)
    total, terms = aecore.objective_terms(model, x, key, OBJ)
    assert float(total) == pytest.approx(float(sum(terms.values())), rel=1e-6)
    h = models.apply_batch(lambda m, v: m.encode(v), model, x, key=jax.random.fold_in(key, 0))[0]
    assert float(terms["code_l2"]) == pytest.approx(
        0.01 * float(jnp.mean(jnp.sum(h**2, 1))), rel=1e-5
    )
    e = models.eval_mode(model)
    jac = jax.vmap(jax.jacfwd(e.encoder.hidden))(x)  # independent: forward mode, [8, 12, D]
    expect = 0.01 * float(jnp.mean(jnp.sum(jac**2, axis=(1, 2))))
    assert float(terms["cae_hidden"]) == pytest.approx(expect, rel=1e-5)


def test_import_aecore_exposes_submodules_without_matplotlib():
    import subprocess
    import sys

    code = (
        "import sys, aecore; "
        "assert 'matplotlib' not in sys.modules, 'matplotlib imported'; "
        "print(aecore.train.fit, aecore.evaluate.encode, aecore.data.load_dataset, "
        "aecore.checkpoint.Checkpointer, aecore.fit, aecore.Term)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-500:]


def test_early_stopping_returns_the_best_evaluated_model_as_a_finished_run(tmp_path):
    # 8 training examples, 8 held out: the user model overfits, so held-out loss turns up.
    x, x_val = _data(8), _data(8, seed=1)
    obj = aecore.Objective(loss="cross_entropy")
    cfg = _config(num_steps=400, batch_size=8, eval_every=5, log_every=5, early_stopping=3)
    wd = str(tmp_path / "run")
    result = train.fit(_model(), obj, x, config=cfg, optimizer=OPT, x_test=x_val, workdir=wd)
    evals = [(r["step"], r["eval_reconstruction"]) for r in result.history]
    best_step, best_loss = min(evals, key=lambda e: e[1])
    assert evals[-1][0] < 400, "the held-out loss never turned up: no early stop exercised"
    assert result.best_step == best_step
    assert evals[-1][0] == best_step + 3 * 5  # three evaluations without improvement
    assert result.step == 400  # a finished run ...
    assert train.evaluate_reconstruction(result.model, x_val, obj) == pytest.approx(best_loss)
    # ... whose checkpoint holds the best model: resuming does nothing and returns it.
    again = train.fit(_model(), obj, x, config=cfg, optimizer=OPT, x_test=x_val, workdir=wd)
    assert again.start_step == 400
    for u, v in zip(_leaves(again.model), _leaves(result.model), strict=True):
        np.testing.assert_array_equal(u, v)


def test_early_stopping_needs_evaluations_and_held_out_data():
    with pytest.raises(ValueError, match="early_stopping=2 needs eval_every > 0"):
        _config(early_stopping=2)
    with pytest.raises(ValueError, match="early_stopping=2 needs x_test"):
        train.fit(_model(), OBJ, _data(), config=_config(early_stopping=2, eval_every=4))
    with pytest.raises(ValueError, match="early_stopping must be an integer >= 0, got -1"):
        _config(early_stopping=-1)
