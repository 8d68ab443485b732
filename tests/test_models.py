"""Models: shapes, linear and tied variants, conv encoders, construction errors."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from aecore import Objective, make_autoencoder
from aecore.models import _draw_size, _glorot, lecun_normal_flat
from aecore.train import init_optimizer, make_train_step


@pytest.mark.parametrize(
    "input_shape, kwargs, code",
    [
        ((64,), dict(hidden=(16,)), 16),
        ((8, 8, 1), dict(hidden=(128,)), 128),  # overcomplete
        ((8, 8, 1), dict(hidden=(32, 16, 8), activation=["relu", "tanh", "sigmoid"]), 8),
        ((28, 28, 1), dict(hidden=(10,), architecture="conv"), 10),
        ((32, 32, 3), dict(hidden=(12,), architecture="conv"), 12),
        ((6,), dict(hidden=(4, 2), tied=True), 2),
    ],
)
def test_shapes(input_shape, kwargs, code):
    model = make_autoencoder(input_shape, key=0, **kwargs)
    x = jax.ShapeDtypeStruct((3, *input_shape), jnp.float32)
    # Shapes only: traced, never compiled or run (an eager conv pass costs seconds on CPU).
    assert jax.eval_shape(jax.vmap(model.encode), x).shape == (3, code)
    assert jax.eval_shape(jax.vmap(model), x).shape == x.shape


@pytest.mark.parametrize(
    "dtype, shapes",
    # Sizes at and just above one draw bucket (4096) and a rank-4 conv kernel; float64 once.
    [("float32", [(64, 64), (65, 64), (3, 3, 2, 4)]), ("float64", [(65, 64)])],
)
def test_initializers_draw_jax_initializers_numbers_bit_for_bit(dtype, shapes, request):
    if dtype == "float64":
        request.getfixturevalue("x64")
    key = jax.random.key(3)
    for shape in shapes:
        ours = [lecun_normal_flat(key, shape, dtype)]
        jaxs = [jax.nn.initializers.lecun_normal()(key, shape, dtype)]
        if len(shape) == 2:  # Dense kernels
            ours.append(_glorot(key, shape, dtype))
            jaxs.append(jax.nn.initializers.glorot_uniform()(key, shape, dtype))
            # Under jit (a traced key) the exact-shape path draws the same numbers.
            ours.append(jax.jit(lambda k, s=shape: _glorot(k, s, dtype))(key))
            jaxs.append(jaxs[-1])
        for a, b in zip(ours, jaxs, strict=True):
            assert a.shape == shape and a.dtype == b.dtype
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_draw_sizes_are_few_and_cover_n():
    sizes = {_draw_size(n) for n in range(1, 20000, 7)}
    assert sizes == {4096, 8192, 16384, 32768}
    big = 5 * 2**22 + 1
    assert _draw_size(big) == 6 * 2**22 >= big


def test_linear_autoencoder_is_linear():
    model = make_autoencoder((5,), hidden=(3,), activation="identity", output="identity", key=0)
    x, y = jax.random.normal(jax.random.key(0), (2, 5))
    f = lambda v: model(v) - model(jnp.zeros(5))  # noqa: E731
    np.testing.assert_allclose(f(2 * x + 3 * y), 2 * f(x) + 3 * f(y), rtol=1e-5, atol=1e-5)


def test_tied_decoder_uses_encoder_weight_transposed_after_a_step():
    model = make_autoencoder((6,), hidden=(4,), tied=True, output="identity", key=0)
    opt = optax.sgd(0.1)
    step = make_train_step(Objective(), opt, donate=False)
    x = jax.random.normal(jax.random.key(1), (8, 6))
    opt_state = init_optimizer(opt, model)
    # ONE gradient leaf and one optimizer slot for the shared weight: the Params are the
    # encoder kernel, the encoder bias and the decoder bias (Adam: mu and nu each, one count).
    params = nnx.state(model, nnx.Param)
    grads = jax.grad(lambda p: jnp.sum(nnx.merge(nnx.graphdef(model), p)(jnp.ones(6))))(params)
    assert len(jax.tree.leaves(grads)) == 3
    assert len(jax.tree.leaves(init_optimizer(optax.adam(1e-3), model))) == 2 * 3 + 1
    new, _, _ = step(model, opt_state, x, jax.random.key(2))
    w = new.encoder.layers[0].kernel[...]
    assert not np.allclose(w, model.encoder.layers[0].kernel[...])  # the step moved it
    # Decoding uses exactly Wᵀ of the updated encoder weight: no separate decoder matrix exists.
    h = jax.random.normal(jax.random.key(3), (4,))
    np.testing.assert_array_equal(new.decode_logits(h), w @ h + new.decoder.biases[0][...])
    assert sum(p.ndim >= 2 for p in jax.tree.leaves(new)) == 1


def test_tied_gradient_sums_encoder_and_decoder_paths():
    model = make_autoencoder((3,), hidden=(2,), tied=True, output="identity", key=0)
    x = jnp.array([0.5, -1.0, 2.0])
    w = model.encoder.layers[0].kernel[...]

    def untied(enc_w, dec_w):  # the same network with two copies of the weight
        h = jax.nn.sigmoid(x @ enc_w + model.encoder.layers[0].bias[...])
        return jnp.sum((dec_w @ h + model.decoder.biases[0][...] - x) ** 2)

    g_enc, g_dec = jax.grad(untied, argnums=(0, 1))(w, w)
    g = jax.grad(lambda m: jnp.sum((m(x) - x) ** 2))(model).encoder.layers[0].kernel[...]
    np.testing.assert_allclose(g, g_enc + g_dec, rtol=1e-5)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(hidden=(0,)), "hidden width.*0"),
        (dict(hidden=()), "at least one"),
        (dict(activation="swish"), "'swish'"),
        (dict(output="softmax"), "'softmax'"),
        (dict(architecture="rnn"), "'rnn'"),
        (dict(hidden=(4, 2), activation=["relu"]), "1 activations"),
        (dict(tied=True, architecture="conv"), "tied"),
    ],
)
def test_construction_errors_name_the_value(kwargs, match):
    with pytest.raises(ValueError, match=match):
        make_autoencoder((8, 8, 1), key=0, **kwargs)


def test_conv_shape_check_follows_the_number_of_stride2_layers():
    # three stride-2 layers need H, W divisible by 8: 28 is not (it passed a "÷ 4" check and
    # then failed deep inside dot_general)
    with pytest.raises(
        ValueError, match=r"3 stride-2 layers .* divisible by 8, got .*\(28, 28, 1\)"
    ):
        make_autoencoder((28, 28, 1), hidden=(8,), architecture="conv", conv_channels=(4, 8, 16))
    model = make_autoencoder(
        (32, 32, 1), hidden=(8,), architecture="conv", conv_channels=(4, 8, 16), key=0
    )
    x = jax.ShapeDtypeStruct((32, 32, 1), jnp.float32)
    assert jax.eval_shape(model, x).shape == (32, 32, 1)
