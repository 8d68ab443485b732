"""Per-example autoencoder modules: encoder h = g(W x + b), decoder x_hat = f(W* h + c).

Every module maps ONE example; batch with `jax.vmap` at the call site, so `jax.jacrev(model.encode)`
is the exact Jacobian of one example.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from aecore import _checks

# Elementwise activations g and their derivatives g'(a) written from the pre-activation a.
# The derivative is spelled out per activation (not sigmoid's h(1-h) for all): the closed-form
# contractive penalty depends on it, and it is tested against autodiff for every entry.
ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "sigmoid": jax.nn.sigmoid,
    "tanh": jnp.tanh,
    "relu": jax.nn.relu,
    "softplus": jax.nn.softplus,
    "identity": lambda a: a,
}


def activation_derivative(name: str, a: jax.Array) -> jax.Array:
    """g'(a) for the elementwise activation `name`, same shape as `a`."""
    if name == "sigmoid":
        s = jax.nn.sigmoid(a)
        return s * (1 - s)
    if name == "tanh":
        return 1 - jnp.tanh(a) ** 2
    if name == "relu":
        return (a > 0).astype(a.dtype)
    if name == "softplus":
        return jax.nn.sigmoid(a)
    if name == "identity":
        return jnp.ones_like(a)
    _checks.check_choice("activation", name, ACTIVATIONS)
    raise AssertionError("unreachable")


OUTPUTS = ("sigmoid", "identity")
ARCHITECTURES = ("mlp", "conv")


def _glorot(key: jax.Array, shape: tuple[int, ...], dtype) -> jax.Array:
    return jax.nn.initializers.glorot_uniform()(key, shape, dtype)


class Dense(nnx.Module):
    """One dense layer with an elementwise activation: g(x @ kernel + bias).

    `kernel` is [in, out], so the lecture's W (rows = units) is `kernel.T`.
    """

    def __init__(
        self, in_features: int, out_features: int, *, activation: str, key: jax.Array, dtype
    ):
        _checks.check_choice("activation", activation, ACTIVATIONS)
        self.kernel = nnx.Param(_glorot(key, (in_features, out_features), dtype))
        self.bias = nnx.Param(jnp.zeros((out_features,), dtype))
        self.activation = activation

    def preactivation(self, x: jax.Array) -> jax.Array:  # [in] -> [out]
        return x @ self.kernel[...] + self.bias[...]

    def __call__(self, x: jax.Array) -> jax.Array:
        return ACTIVATIONS[self.activation](self.preactivation(x))


class MLPEncoder(nnx.Module):
    """h = g_L(W_L ... g_1(W_1 x + b_1) ... + b_L) on one flattened example.

    The encoder exposes its layers (`self.layers`), which lets `aecore.jacobian` use the closed
    form (one layer) or the structured exact path (several layers) for the contractive penalty.
    """

    def __init__(
        self,
        input_shape: Sequence[int],
        widths: Sequence[int],
        activations: Sequence[str],
        *,
        key: jax.Array,
        dtype=jnp.float32,
    ):
        self.input_shape = tuple(int(s) for s in input_shape)
        sizes = [int(np.prod(self.input_shape)), *widths]
        keys = jax.random.split(key, len(widths))
        self.layers = nnx.List(
            [
                Dense(sizes[i], sizes[i + 1], activation=activations[i], key=keys[i], dtype=dtype)
                for i in range(len(widths))
            ]
        )

    def __call__(self, x: jax.Array) -> jax.Array:  # [*input_shape] -> [d_z]
        h = x.reshape(-1)
        for layer in self.layers:
            h = layer(h)
        return h


class MLPDecoder(nnx.Module):
    """Pre-output W* h + c of an untied MLP decoder (the output activation f is the model's)."""

    def __init__(
        self,
        code_dim: int,
        widths: Sequence[int],
        activations: Sequence[str],
        output_shape: Sequence[int],
        *,
        key: jax.Array,
        dtype=jnp.float32,
    ):
        self.output_shape = tuple(int(s) for s in output_shape)
        sizes = [code_dim, *widths, int(np.prod(self.output_shape))]
        acts = [*activations, "identity"]
        keys = jax.random.split(key, len(sizes) - 1)
        self.layers = nnx.List(
            [
                Dense(sizes[i], sizes[i + 1], activation=acts[i], key=keys[i], dtype=dtype)
                for i in range(len(sizes) - 1)
            ]
        )

    def __call__(self, h: jax.Array, encoder: MLPEncoder | None = None) -> jax.Array:
        del encoder
        for layer in self.layers:
            h = layer(h)
        return h.reshape(self.output_shape)


class TiedDecoder(nnx.Module):
    """Decoder whose weights are the encoder's, transposed: W*_l = W_lᵀ, in reverse order.

    It holds only its own biases: the weights are read from the encoder passed at call time, so
    the model has ONE array per weight and one gradient step moves encoder and decoder together.
    """

    def __init__(
        self,
        encoder: MLPEncoder,
        output_shape: Sequence[int],
        *,
        dtype=jnp.float32,
    ):
        self.output_shape = tuple(int(s) for s in output_shape)
        in_sizes = [layer.kernel.shape[0] for layer in encoder.layers]
        # Decoding layer l maps width n_l back to n_{l-1}; its activation is the encoder's
        # activation one layer below, and the last one is the identity (f is the model's).
        self.biases = nnx.List([nnx.Param(jnp.zeros((n,), dtype)) for n in reversed(in_sizes)])
        below = [layer.activation for layer in encoder.layers][:-1]
        self.activations = tuple(reversed(below)) + ("identity",)

    def __call__(self, h: jax.Array, encoder: MLPEncoder) -> jax.Array:
        for layer, bias, act in zip(
            reversed(encoder.layers), self.biases, self.activations, strict=True
        ):
            h = ACTIVATIONS[act](layer.kernel[...] @ h + bias[...])
        return h.reshape(self.output_shape)


class ConvEncoder(nnx.Module):
    """Stride-2 convolutions then a dense code layer, for [H, W, C] images.

    H and W must be divisible by 2**len(channels) (4 for the default two layers).
    """

    def __init__(
        self,
        input_shape: Sequence[int],
        channels: Sequence[int],
        code_dim: int,
        *,
        activation: str,
        code_activation: str,
        key: jax.Array,
        dtype=jnp.float32,
    ):
        h, w, c = (int(s) for s in input_shape)
        factor = 2 ** len(channels)
        if h % factor or w % factor:
            raise ValueError(
                f"conv encoder with {len(channels)} stride-2 layers (conv_channels "
                f"{tuple(channels)}) needs H and W divisible by {factor}, got input_shape "
                f"{tuple(input_shape)}"
            )
        self.input_shape = (h, w, c)
        self.activation = activation
        k = jax.random.split(key, len(channels) + 1)
        sizes = [c, *channels]
        self.convs = nnx.List(
            [
                nnx.Conv(
                    sizes[i],
                    sizes[i + 1],
                    (3, 3),
                    strides=2,
                    param_dtype=dtype,
                    dtype=dtype,
                    rngs=nnx.Rngs(k[i]),
                )
                for i in range(len(channels))
            ]
        )
        flat = (h // 2 ** len(channels)) * (w // 2 ** len(channels)) * sizes[-1]
        self.code = Dense(flat, code_dim, activation=code_activation, key=k[-1], dtype=dtype)

    def __call__(self, x: jax.Array) -> jax.Array:  # [H, W, C] -> [d_z]
        y = x.reshape(self.input_shape)
        for conv in self.convs:
            y = ACTIVATIONS[self.activation](conv(y))
        return self.code(y.reshape(-1))


class ConvDecoder(nnx.Module):
    """Dense layer to a small feature map, then stride-2 transposed convolutions up to [H, W, C]."""

    def __init__(
        self,
        code_dim: int,
        channels: Sequence[int],
        output_shape: Sequence[int],
        *,
        activation: str,
        key: jax.Array,
        dtype=jnp.float32,
    ):
        h, w, c = (int(s) for s in output_shape)
        n = len(channels)
        self.output_shape = (h, w, c)
        self.activation = activation
        self.start = (h // 2**n, w // 2**n, channels[-1])
        k = jax.random.split(key, n + 1)
        self.dense = Dense(
            code_dim, int(np.prod(self.start)), activation=activation, key=k[0], dtype=dtype
        )
        sizes = [*reversed(channels), c]
        self.deconvs = nnx.List(
            [
                nnx.ConvTranspose(
                    sizes[i],
                    sizes[i + 1],
                    (3, 3),
                    strides=2,
                    param_dtype=dtype,
                    dtype=dtype,
                    rngs=nnx.Rngs(k[i + 1]),
                )
                for i in range(n)
            ]
        )

    def __call__(self, h: jax.Array, encoder=None) -> jax.Array:
        del encoder
        y = self.dense(h).reshape(self.start)
        for i, deconv in enumerate(self.deconvs):
            y = deconv(y)
            if i < len(self.deconvs) - 1:
                y = ACTIVATIONS[self.activation](y)
        return y


class Autoencoder(nnx.Module):
    """x_hat = f(decoder(encoder(x))) on one example; f is `output` ("sigmoid" or "identity").

    `decode_logits` returns the pre-output W* h + c, which the cross-entropy loss consumes
    directly so that it stays finite at saturated outputs.
    """

    def __init__(self, encoder, decoder, *, output: str):
        _checks.check_choice("output activation", output, OUTPUTS)
        self.encoder = encoder
        self.decoder = decoder
        self.output = output

    @property
    def tied(self) -> bool:
        return isinstance(self.decoder, TiedDecoder)

    def encode(self, x: jax.Array) -> jax.Array:  # [*input_shape] -> [d_z]
        return self.encoder(x)

    def decode_logits(self, h: jax.Array) -> jax.Array:  # [d_z] -> [*input_shape]
        return self.decoder(h, self.encoder)

    def decode(self, h: jax.Array) -> jax.Array:
        return ACTIVATIONS[self.output](self.decode_logits(h))

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.decode(self.encode(x))


def _as_key(key) -> jax.Array:
    if isinstance(key, int | np.integer):
        return jax.random.key(int(key))
    return key


def make_autoencoder(
    input_shape: Sequence[int],
    *,
    hidden: Sequence[int] = (64,),
    activation: str | Sequence[str] = "sigmoid",
    output: str = "sigmoid",
    tied: bool = False,
    architecture: str = "mlp",
    decoder_hidden: Sequence[int] | None = None,
    conv_channels: Sequence[int] = (16, 32),
    key: jax.Array | int = 0,
    dtype=jnp.float32,
) -> Autoencoder:
    """Builds an autoencoder for examples of shape `input_shape`.

    Args:
      input_shape: shape of ONE example, e.g. (8, 8, 1) or (784,).
      hidden: encoder widths; the last one is the code size d_z (smaller than the input for an
        undercomplete code, larger for an overcomplete one).
      activation: one name for every encoder layer, or one per layer; from ACTIVATIONS. All
        "identity" with output="identity" gives the linear autoencoder (PCA's subspace).
      output: decoder output activation f: "sigmoid" (pair with cross-entropy, data in [0, 1])
        or "identity" (pair with squared error, real data).
      tied: decoder weights are the encoder's transposed (MLP only).
      architecture: "mlp" or "conv" (conv: input [H, W, C] with H, W divisible by
        2**len(conv_channels), 4 for the default; `hidden` holds the one code width).
      decoder_hidden: hidden widths of an untied MLP decoder; default mirrors the encoder.
      conv_channels: channels of the conv encoder's stride-2 layers.
      key: PRNG key or integer seed for the initial weights.
      dtype: parameter dtype (float64 in exactness tests).

    Returns:
      An `Autoencoder` module (a pytree: `jax.grad`, `jax.jit` and optax act on it directly).
    """
    _checks.check_choice("architecture", architecture, ARCHITECTURES)
    _checks.check_choice("output activation", output, OUTPUTS)
    input_shape = tuple(int(s) for s in input_shape)
    if not input_shape or any(s < 1 for s in input_shape):
        raise ValueError(f"input_shape must be non-empty positive sizes, got {input_shape}")
    hidden = tuple(hidden)
    if not hidden:
        raise ValueError("hidden must name at least one code width, got ()")
    for w in hidden:
        _checks.check_positive_int("hidden width", w)
    acts = [activation] * len(hidden) if isinstance(activation, str) else list(activation)
    if len(acts) != len(hidden):
        raise ValueError(
            f"got {len(acts)} activations {acts} for {len(hidden)} hidden layers {hidden}"
        )
    for a in acts:
        _checks.check_choice("activation", a, ACTIVATIONS)
    k_enc, k_dec = jax.random.split(_as_key(key))

    if architecture == "conv":
        if tied:
            raise ValueError("tied=True is supported for architecture='mlp' only, got 'conv'")
        if len(input_shape) != 3:
            raise ValueError(f"conv autoencoder needs input_shape [H, W, C], got {input_shape}")
        if len(hidden) != 1:
            raise ValueError(f"conv autoencoder takes one code width in hidden, got {hidden}")
        for c in conv_channels:
            _checks.check_positive_int("conv channel count", c)
        enc = ConvEncoder(
            input_shape,
            conv_channels,
            hidden[0],
            activation="relu",
            code_activation=acts[0],
            key=k_enc,
            dtype=dtype,
        )
        dec = ConvDecoder(
            hidden[0], conv_channels, input_shape, activation="relu", key=k_dec, dtype=dtype
        )
        return Autoencoder(enc, dec, output=output)

    enc = MLPEncoder(input_shape, hidden, acts, key=k_enc, dtype=dtype)
    if tied:
        if decoder_hidden is not None:
            raise ValueError("decoder_hidden cannot be set with tied=True (the decoder is Wᵀ)")
        dec = TiedDecoder(enc, input_shape, dtype=dtype)
    else:
        dh = tuple(reversed(hidden[:-1])) if decoder_hidden is None else tuple(decoder_hidden)
        for w in dh:
            _checks.check_positive_int("decoder hidden width", w)
        dec_acts = list(reversed(acts[:-1])) if decoder_hidden is None else [acts[0]] * len(dh)
        dec = MLPDecoder(hidden[-1], dh, dec_acts, input_shape, key=k_dec, dtype=dtype)
    return Autoencoder(enc, dec, output=output)


def weight_arrays(model: nnx.Module) -> list[jax.Array]:
    """All weight matrices and conv kernels of a model (arrays of rank >= 2), biases excluded."""
    return [p for p in jax.tree.leaves(model) if p.ndim >= 2]


DTYPES = ("float32", "float64", "bfloat16", "float16")


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """Every argument of `make_autoencoder` but the input shape and key, as plain values.

    A config's `model` section is derived from this dataclass (`aecore.configs`), so each field
    is settable from a config file and from `--config.model.FIELD=...`; `build` is the one place
    where a spec becomes a model. Lists (from JSON) are read as tuples.

    Attributes:
      hidden: encoder widths; the last is the code size d_z.
      activation: encoder activation (one name for every layer, or a tuple, one per layer).
      output: decoder output activation, "sigmoid" or "identity".
      tied: decoder weights are the encoder's transposed (MLP only).
      architecture: "mlp" or "conv".
      decoder_hidden: hidden widths of an untied MLP decoder; None mirrors the encoder.
      conv_channels: channels of the conv encoder's stride-2 layers.
      dtype: parameter dtype name, one of `DTYPES` ("float64" for exactness checks).
    """

    hidden: tuple[int, ...] = (64,)
    activation: str | tuple[str, ...] = "sigmoid"
    output: str = "sigmoid"
    tied: bool = False
    architecture: str = "mlp"
    decoder_hidden: tuple[int, ...] | None = None
    conv_channels: tuple[int, ...] = (16, 32)
    dtype: str = "float32"

    def __post_init__(self):
        for name in ("hidden", "decoder_hidden", "conv_channels", "activation"):
            value = getattr(self, name)
            if isinstance(value, list):  # JSON has no tuples
                object.__setattr__(self, name, tuple(value))
        _checks.check_choice("model dtype", self.dtype, DTYPES)

    def build(self, input_shape: Sequence[int], key: jax.Array | int) -> Autoencoder:
        """`make_autoencoder(input_shape, key=key, **fields)`: the model this spec describes."""
        kwargs = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        kwargs["dtype"] = jnp.dtype(self.dtype)
        return make_autoencoder(input_shape, key=key, **kwargs)
