"""Per-example autoencoder modules (encoder h = g(W x + b), decoder x_hat = f(W* h + c)) and the
model protocol that every aecore function (objective, train, evaluate) relies on.

The model protocol (what `fit`, `objective_terms` and `aecore.evaluate` call):
  - `model.encode(x)`: ONE example of shape `input_shape` -> a code vector `[d_z]`.
  - `model.decode_logits(h)`: one code `[d_z]` -> the decoder's pre-output, shape `input_shape`.
  - `model.decode(h)`: `f(decode_logits(h))`, the reconstruction.
  - `model.output`: the name of f, "sigmoid" or "identity". It pairs with the loss:
    "cross_entropy" reads `decode_logits` and needs output="sigmoid" (data in [0, 1]);
    "squared_error" reads `decode` (equal to the logits when output="identity").
  Batch with `jax.vmap` (or `apply_batch`) at the call site, so `jax.jacrev(model.encode)` is the
  exact Jacobian of one example. `Autoencoder(encoder, decoder, output=)` turns any two callables
  (flax.nnx modules, Equinox modules, Linen modules via `from_linen`, plain functions) into
  such a model: the encoder is called `encoder(x)`, the decoder `decoder(h)`; a decoder that
  reuses the encoder's weights (tied) sets the class attribute `uses_encoder = True` and is
  called `decoder(h, encoder)`, so each weight exists once in the model (one array, one
  gradient, one optimizer update).

Modules may hold non-parameter state: RNG streams (`nnx.Dropout`), batch statistics
(`nnx.BatchNorm(..., axis_name=BATCH_AXIS)`, which reduces over the examples of a batch under
`apply_batch`) or any `nnx.Variable`. Training differentiates the `nnx.Param` state only and
carries the rest; `eval_mode` gives the deterministic view used by evaluation and by the
Jacobian penalties.
"""

from __future__ import annotations

import dataclasses
import functools
import sys
from collections.abc import Callable, Sequence
from typing import Any, Protocol, TypeVar

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.typing import DTypeLike

from aecore import _checks

# Elementwise activations g, applied to the pre-activation a.
ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "sigmoid": jax.nn.sigmoid,
    "tanh": jnp.tanh,
    "relu": jax.nn.relu,
    "softplus": jax.nn.softplus,
    "identity": lambda a: a,
}


class Model(Protocol):
    """The model protocol above as a type: what `fit`, `objective_terms` and `aecore.evaluate`
    call, whatever the class (`Autoencoder` is one; so is any object with these members)."""

    output: str

    def encode(self, x: jax.Array, /) -> jax.Array: ...

    def decode_logits(self, h: jax.Array, /) -> jax.Array: ...

    def decode(self, h: jax.Array, /) -> jax.Array: ...


M = TypeVar("M")


OUTPUTS = ("sigmoid", "identity")
ARCHITECTURES = ("mlp", "conv")


# Initial weights are drawn flat, in a few fixed sizes. JAX's random bits for element i do not
# depend on how many elements are drawn (`jax_threefry_partitionable`, the default), so drawing
# `_draw_size(n)` numbers and keeping the first n gives exactly the numbers of a draw of shape
# [n]; XLA:CPU compiles a random draw for ~0.3-0.6 s per distinct shape (seconds for a rank-4
# conv kernel), and this way it compiles once per size bucket for every model a session builds.
_MIN_DRAW, _MAX_POW2_DRAW = 1 << 12, 1 << 22


def _draw_size(n: int) -> int:
    """The smallest power of two >= n (at least 4096); past 2**22, the next multiple of 2**22."""
    if n <= _MAX_POW2_DRAW:
        return max(_MIN_DRAW, 1 << (n - 1).bit_length())
    return -(-n // _MAX_POW2_DRAW) * _MAX_POW2_DRAW


@functools.partial(jax.jit, static_argnames=("kind", "size"))
def _scaled_draw(key, scale, *, kind: str, size: int) -> jax.Array:
    """`size` draws of U(-1, 1) or N(0, 1) truncated to +-2 (as variance_scaling draws them),
    times `scale` (a scalar in the parameter dtype)."""
    if kind == "uniform":
        flat = jax.random.uniform(key, (size,), scale.dtype, -1)
    else:
        flat = jax.random.truncated_normal(key, -2, 2, (size,), scale.dtype)
    return flat * scale


def _variance_scaling(key, shape, dtype, *, kind: str, fan: float) -> jax.Array:
    """jax.nn.initializers.variance_scaling(1, fan, kind) for a given fan, drawn flat.

    The scale is rounded in `dtype` as JAX rounds it, so the numbers are JAX's own (tested
    against `glorot_uniform` / `lecun_normal` bit for bit). Traced keys (under `jit`,
    `eval_shape`) and non-partitionable PRNG configs draw the exact shape instead.
    """
    shape = tuple(int(s) for s in shape)
    n = int(np.prod(shape))
    dtype = jnp.dtype(jax.dtypes.canonicalize_dtype(dtype))
    variance = np.asarray(1.0 / fan, dtype)
    if kind == "uniform":
        scale = np.sqrt(np.asarray(3, dtype) * variance)
    else:  # the std of N(0, 1) truncated to +-2
        scale = np.sqrt(variance) / np.asarray(0.87962566103423978, dtype)
    scale = jnp.asarray(scale, dtype)
    partitionable = jax.config.jax_threefry_partitionable  # type: ignore[attr-defined]
    if isinstance(key, jax.core.Tracer) or not partitionable:
        return _scaled_draw(key, scale, kind=kind, size=n).reshape(shape)
    flat = _scaled_draw(key, scale, kind=kind, size=_draw_size(n))
    # Slice on the host: a device slice would compile once per shape again.
    return jnp.asarray(np.asarray(flat)[:n].reshape(shape))


def _glorot(key: jax.Array, shape: tuple[int, ...], dtype) -> jax.Array:
    """Glorot/Xavier uniform for a [in, out] kernel: jax.nn.initializers.glorot_uniform()."""
    return _variance_scaling(key, shape, dtype, kind="uniform", fan=(shape[0] + shape[1]) / 2)


def lecun_normal_flat(
    key: jax.Array, shape: Sequence[int], dtype: DTypeLike = jnp.float32
) -> jax.Array:
    """flax's default conv kernel init (`lecun_normal`: truncated normal, variance 1/fan_in,
    fan_in = the product of all axes but the last), the same numbers as
    `jax.nn.initializers.lecun_normal()`, drawn flat in a shared size bucket: XLA:CPU compiles
    a rank-4 draw for seconds per kernel shape, which made building a conv autoencoder ~10 s."""
    shape = tuple(int(s) for s in shape)
    return _variance_scaling(
        key, shape, dtype, kind="truncated_normal", fan=float(np.prod(shape[:-1]))
    )


class Dense(nnx.Module):
    """One dense layer with an elementwise activation: g(x @ kernel + bias).

    `kernel` is [in, out], so the lecture's W (rows = units) is `kernel.T`.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        activation: str,
        key: jax.Array,
        dtype: DTypeLike,
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

    `self.layers` are its dense layers (the first-layer filters of the figures); the exact
    contractive routes come from what `encode` computes (`aecore.jacobian`), not from this class.
    """

    def __init__(
        self,
        input_shape: Sequence[int],
        widths: Sequence[int],
        activations: Sequence[str],
        *,
        key: jax.Array,
        dtype: DTypeLike = jnp.float32,
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
        dtype: DTypeLike = jnp.float32,
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

    def __call__(self, h: jax.Array) -> jax.Array:  # [d_z] -> [*output_shape]
        for layer in self.layers:
            h = layer(h)
        return h.reshape(self.output_shape)


class TiedDecoder(nnx.Module):
    """Decoder whose weights are the encoder's, transposed: W*_l = W_lᵀ, in reverse order.

    It holds only its own biases: the weights are read from the encoder passed at call time
    (`uses_encoder`, see the module docstring), so the model has ONE array per weight and one
    gradient step moves encoder and decoder together.
    """

    uses_encoder = True

    def __init__(
        self,
        encoder: MLPEncoder,
        output_shape: Sequence[int],
        *,
        dtype: DTypeLike = jnp.float32,
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
        dtype: DTypeLike = jnp.float32,
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
                    kernel_init=lecun_normal_flat,
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
        dtype: DTypeLike = jnp.float32,
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
                    kernel_init=lecun_normal_flat,
                    param_dtype=dtype,
                    dtype=dtype,
                    rngs=nnx.Rngs(k[i + 1]),
                )
                for i in range(n)
            ]
        )

    def __call__(self, h: jax.Array) -> jax.Array:  # [d_z] -> [H, W, C]
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

    Args:
      encoder: any callable mapping ONE example to a code vector (an nnx module, a function).
      decoder: any callable mapping one code to the pre-output (shape of one example); called
        `decoder(h)`, or `decoder(h, encoder)` when it sets `uses_encoder = True` (tied).
      output: the output activation f, "sigmoid" (pair with cross-entropy) or "identity"
        (pair with squared error).

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> from flax import nnx
      >>> import aecore
      >>> rngs = nnx.Rngs(0)
      >>> encoder = nnx.Sequential(nnx.Linear(6, 3, rngs=rngs), jax.nn.sigmoid)  # your own parts
      >>> model = aecore.Autoencoder(encoder, nnx.Linear(3, 6, rngs=rngs), output="identity")
      >>> x = jnp.ones((5, 6))
      >>> jax.vmap(model)(x).shape
      (5, 6)
      >>> aecore.frobenius_sq(model.encode, x).shape
      (5,)
    """

    def __init__(self, encoder: Callable, decoder: Callable, *, output: str):
        _checks.check_choice("output activation", output, OUTPUTS)
        for name, part in (("encoder", encoder), ("decoder", decoder)):
            if not callable(part):
                raise TypeError(
                    f"{name} must be callable (an nnx module or a function), got {part!r}"
                )
        self.encoder = as_part("encoder", encoder)
        self.decoder = as_part("decoder", decoder)
        self.output = output

    @property
    def tied(self) -> bool:
        return bool(getattr(self.decoder, "uses_encoder", False))

    def encode(self, x: jax.Array) -> jax.Array:  # [*input_shape] -> [d_z]
        return self.encoder(x)

    def decode_logits(self, h: jax.Array) -> jax.Array:  # [d_z] -> [*input_shape]
        if self.tied:
            return self.decoder(h, self.encoder)
        return self.decoder(h)

    def decode(self, h: jax.Array) -> jax.Array:
        return ACTIVATIONS[self.output](self.decode_logits(h))

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.decode(self.encode(x))


# --------------------------------------------------------------------------------------------
# Parts written with other JAX module libraries: Equinox modules, Linen modules with parameters


def _is_array(leaf) -> bool:
    return isinstance(leaf, jax.Array | np.ndarray | np.generic)


def _as_variable(leaf) -> nnx.Variable:
    """Floating-point arrays are trained (`nnx.Param`); others (integers, keys) are carried."""
    array = jnp.asarray(leaf)
    return nnx.Param(array) if jnp.issubdtype(array.dtype, jnp.inexact) else nnx.Variable(array)


class ArrayTreePart(nnx.Module):
    """A callable pytree (an Equinox module, Linen parameters) as an nnx module.

    Its floating-point array leaves become `nnx.Param` (what `fit` trains, checkpoints and
    restores), other arrays `nnx.Variable` (carried unchanged); the tree structure and non-array
    leaves (activation functions, sizes) stay static. The call rebuilds the tree from the current
    arrays and calls it: no primitive is added, so `jax.make_jaxpr` of the part, and hence the
    Jacobian engine's route, is the original's.
    """

    def __init__(self, tree: Any):
        leaves, self.treedef = jax.tree.flatten(tree)
        self.static_leaves = tuple(None if _is_array(v) else v for v in leaves)
        self.arrays = nnx.List([_as_variable(v) for v in leaves if _is_array(v)])

    @property
    def tree(self):
        """The wrapped pytree holding the current (e.g. trained) arrays."""
        arrays = iter(self.arrays)
        leaves = [next(arrays)[...] if v is None else v for v in self.static_leaves]
        return jax.tree.unflatten(self.treedef, leaves)


class EquinoxPart(ArrayTreePart):
    """An Equinox module as an encoder/decoder (`Autoencoder` wraps one automatically);
    `.module` is the Equinox module with the current arrays."""

    @property
    def module(self):
        return self.tree

    def __call__(self, *args):
        return self.tree(*args)


class LinenPart(ArrayTreePart):
    """A Linen module with its parameters as an encoder/decoder: `from_linen(module, variables)`;
    calls `module.apply({"params": params}, x)`. `.params` holds the current parameters."""

    def __init__(self, module: Any, params: Any):
        super().__init__(params)
        self.module = module

    @property
    def params(self):
        return self.tree

    def __call__(self, *args):
        return self.module.apply({"params": self.tree}, *args)


def from_linen(module: Any, variables: Any) -> LinenPart:
    """A Linen module and its variables as an encoder or decoder of `Autoencoder`.

    Args:
      module: a `flax.linen.Module` acting on ONE example (or one code).
      variables: what `module.init(key, x)` returns, `{"params": ...}` (or the params tree
        alone). Only parameters are supported: other collections (batch_stats, ...) are refused.

    Returns:
      A `LinenPart`: an nnx module whose parameters `fit` trains.
    """
    from flax import linen

    if not isinstance(module, linen.Module):
        raise TypeError(f"from_linen needs a flax.linen.Module, got {type(module).__name__}")
    if module.scope is not None:  # bound: keep the module definition, not its scope
        module = module.clone(parent=None)
    variables = dict(variables)
    if "params" not in variables:  # the params tree alone
        variables = {"params": variables}
    params = variables.pop("params")
    if variables:
        raise ValueError(
            f"from_linen trains the 'params' collection only; got the collections "
            f"{sorted(variables)} besides it (Linen batch statistics are not supported)"
        )
    return LinenPart(module, params)


def _library_module(name: str) -> Any:
    """`name`'s module base class, if that library is already imported (never imports it)."""
    lib = sys.modules.get(name)
    return None if lib is None else getattr(lib, "Module", None)


def _from_to_nnx(part) -> LinenPart:
    """An `nnx.bridge.ToNNX`-wrapped (and initialized) Linen module as `from_linen`."""
    other = nnx.state(part, nnx.Not(nnx.Any(nnx.Param, nnx.RngState)))
    if jax.tree.leaves(other):
        raise ValueError(
            "from_linen trains the 'params' collection only; this nnx.bridge.ToNNX module holds "
            "other state besides it (Linen batch statistics are not supported)"
        )
    params = nnx.to_pure_dict(nnx.state(part, nnx.Param))
    return from_linen(part.to_nnx__module, {"params": params})


def as_part(name: str, part: Callable) -> Callable:
    """The encoder or decoder `part` as `Autoencoder` holds it: nnx modules and plain functions
    as they are, Equinox modules as `EquinoxPart`, bound Linen modules and Linen modules wrapped
    by `nnx.bridge.ToNNX` as `from_linen`; anything else holding arrays is refused in one line
    saying what is supported."""
    if isinstance(part, nnx.bridge.ToNNX):  # its RNG counter cannot be advanced under vmap
        return _from_to_nnx(part)
    if isinstance(part, nnx.Module):
        return part
    eqx_module = _library_module("equinox")
    if eqx_module is not None and isinstance(part, eqx_module):
        return EquinoxPart(part)
    linen_module = _library_module("flax.linen")
    if linen_module is not None and isinstance(part, linen_module):
        if part.scope is None:
            raise TypeError(
                f"{name} is a Linen module without parameters: pass "
                f"aecore.models.from_linen(module, module.init(key, x)) (or a bound module)"
            )
        return from_linen(*part.unbind())
    attrs = getattr(part, "__dict__", {})
    leaves = jax.tree.leaves([part, dict(attrs)])
    if any(hasattr(v, "shape") and hasattr(v, "dtype") for v in leaves):
        raise TypeError(
            f"{name} {type(part).__name__} holds arrays but is neither an nnx module, an "
            "Equinox module nor a Linen module (aecore.models.from_linen(module, params)): "
            "those are the parts whose arrays aecore trains"
        )
    return part


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
    dtype: DTypeLike = jnp.float32,
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

    Examples:
      >>> import jax.numpy as jnp
      >>> import aecore
      >>> model = aecore.make_autoencoder((8, 8, 1), hidden=(32, 16), key=0)
      >>> model.encode(jnp.zeros((8, 8, 1))).shape  # one example -> its code
      (16,)
      >>> model(jnp.zeros((8, 8, 1))).shape
      (8, 8, 1)
      >>> aecore.make_autoencoder((64,), hidden=(16,), tied=True, key=0).tied
      True
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
        conv_enc = ConvEncoder(
            input_shape,
            conv_channels,
            hidden[0],
            activation="relu",
            code_activation=acts[0],
            key=k_enc,
            dtype=dtype,
        )
        conv_dec = ConvDecoder(
            hidden[0], conv_channels, input_shape, activation="relu", key=k_dec, dtype=dtype
        )
        return Autoencoder(conv_enc, conv_dec, output=output)

    enc = MLPEncoder(input_shape, hidden, acts, key=k_enc, dtype=dtype)
    dec: TiedDecoder | MLPDecoder
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


def weight_arrays(model: Model) -> list[jax.Array]:
    """All weight matrices and conv kernels (`nnx.Param` arrays of rank >= 2), biases excluded.

    Non-parameter state (RNG keys, batch statistics) is never a weight.
    """
    return [p for p in jax.tree.leaves(nnx.state(model, nnx.Param)) if p.ndim >= 2]


# --------------------------------------------------------------------------------------------
# Modes and batching of modules with non-parameter state

BATCH_AXIS = "batch"  # axis name of the examples under `apply_batch` (nnx.BatchNorm axis_name)
_NOT_STATEFUL = nnx.Not(nnx.Any(nnx.Param, nnx.RngState))


def eval_mode(model: M) -> M:
    """The model with Dropout off and BatchNorm on its running averages (shares the arrays).

    Evaluation, the eval steps of `fit` and every Jacobian penalty use this view: the penalty is
    the exact ‖J‖²_F of the deterministic map x -> h. A model without such layers is returned
    unchanged.
    """
    if not isinstance(model, nnx.Module):
        return model
    return nnx.view(model, deterministic=True, use_running_average=True, raise_if_not_found=False)


def train_mode(model: M) -> M:
    """The model with Dropout active and BatchNorm on batch statistics (shares the arrays)."""
    if not isinstance(model, nnx.Module):
        return model
    return nnx.view(model, deterministic=False, use_running_average=False, raise_if_not_found=False)


def apply_batch(
    fn: Callable, model: Any, *xs: jax.Array, key: jax.Array | None = None
) -> tuple[Any, nnx.State]:
    """Applies `fn(model, *one_example)` to every example of the batches `xs` ([B, ...] each).

    A model without non-parameter state is plainly vmapped. Otherwise each example sees its own
    RNG keys, derived from `key` (`jax.random.fold_in(key, i)` for the i-th RNG stream, split
    into B keys): the module's stored keys are never advanced, so a run's randomness is a pure
    function of the step key (deterministic resumes). The examples share the axis name
    `BATCH_AXIS` (`nnx.BatchNorm(axis_name=BATCH_AXIS)` reduces over them); state a module
    writes per example (batch statistics) is averaged over the batch.

    Without `key`, the RNG streams keep their stored keys (right in eval mode, where nothing
    draws; in training mode every example would draw the same numbers).

    Returns:
      (outputs [B, ...], updates): `updates` is an `nnx.State` of the written non-parameter,
      non-RNG state (empty when there is none), to be merged into the carried state.
    """
    if not isinstance(model, nnx.Module) or not jax.tree.leaves(
        nnx.state(model, nnx.Not(nnx.Param))
    ):
        return jax.vmap(lambda *a: fn(model, *a))(*xs), nnx.State({})
    graphdef, rng, rest = nnx.split(model, nnx.RngKey, ...)  # type: ignore[misc]
    n = xs[0].shape[0]
    leaves, treedef = jax.tree.flatten(rng)
    if key is None:
        rng_axes = None
    else:
        rng_axes = 0
        rng = jax.tree.unflatten(
            treedef, [jax.random.split(jax.random.fold_in(key, i), n) for i in range(len(leaves))]
        )

    def one(rng_i, *a):
        m = nnx.merge(graphdef, rng_i, rest, copy=True)
        return fn(m, *a), nnx.state(m, _NOT_STATEFUL)

    in_axes = (rng_axes, *([0] * len(xs)))
    out, updates = jax.vmap(one, in_axes=in_axes, axis_name=BATCH_AXIS)(rng, *xs)
    return out, jax.tree.map(_batch_value, updates)


def _batch_value(u: jax.Array) -> jax.Array:
    """One value of state written per example [B, ...]: exact when all examples agree (unchanged
    state, BatchNorm statistics reduced over BATCH_AXIS), else the batch mean."""
    same = jnp.all(u == u[:1])
    return jnp.where(same, u[0], jnp.mean(u, axis=0).astype(u.dtype))


# --------------------------------------------------------------------------------------------
# Protocol check: one example through encode and decode, abstractly (no FLOPs)


def check_protocol(model: Any, example_shape: Sequence[int], dtype: DTypeLike) -> tuple[int, ...]:
    """Checks, with `jax.eval_shape`, that `model` maps ONE example of `example_shape` to a code
    vector and the code back to `example_shape`; raises a one-line error naming what is wrong.

    Returns:
      The code shape `(d_z,)`.

    Raises:
      TypeError: the model lacks a protocol method or attribute, or one of them fails on one
        example (says whether it looks written for batches).
      ValueError: encode does not return a vector, or decode returns another shape (names both).
    """
    example_shape = tuple(int(s) for s in example_shape)
    for attr in ("encode", "decode_logits", "decode"):
        if not callable(getattr(model, attr, None)):
            raise TypeError(
                f"{type(model).__name__} has no method {attr}(); a model needs encode(x), "
                "decode_logits(h), decode(h) and output (see aecore.models), e.g. "
                "aecore.Autoencoder(encoder, decoder, output='sigmoid')"
            )
    output = getattr(model, "output", None)
    if output not in OUTPUTS:
        raise ValueError(f"model.output must be one of {OUTPUTS}, got {output!r}")
    m = eval_mode(model)
    x1 = jax.ShapeDtypeStruct(example_shape, dtype)
    try:
        h = jax.eval_shape(m.encode, x1)
    except Exception as e:
        raise TypeError(
            f"encode must map ONE example of shape {example_shape} to a vector; it raised "
            f"{_checks.one_line(e, limit=200)} — is it written for batches? batch with "
            "jax.vmap at the call site"
        ) from None
    if not hasattr(h, "shape") or len(h.shape) != 1:
        shape = getattr(h, "shape", type(h).__name__)
        hint = (
            " (written for batches? it kept a batch axis)"
            if len(getattr(h, "shape", ())) > 1
            else ""
        )
        raise ValueError(
            f"encode must map ONE example of shape {example_shape} to a code vector [d_z], "
            f"got {shape}{hint}"
        )
    try:
        out = jax.eval_shape(m.decode_logits, h)
    except Exception as e:
        raise TypeError(
            f"decode must map ONE code of shape {h.shape} to an example of shape "
            f"{example_shape}; it raised {_checks.one_line(e, limit=200)}"
        ) from None
    if getattr(out, "shape", None) != example_shape:
        raise ValueError(
            f"decode maps a code of shape {h.shape} to shape {getattr(out, 'shape', None)}, but "
            f"the examples have shape {example_shape}"
        )
    return tuple(h.shape)


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
