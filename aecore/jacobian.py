"""Exact squared Frobenius norms of per-example encoder Jacobians, ‖∂h(x_i)/∂x_i‖²_F.

Routes: autodiff (vmap of jacfwd / jacrev), the closed form of one elementwise layer, and a
structured exact path for MLP encoders; plus clearly named random-projection *estimates*.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from aecore import _checks
from aecore.models import ACTIVATIONS, Autoencoder, Dense, MLPEncoder, activation_derivative

MODES = ("auto", "jacfwd", "jacrev", "closed_form", "structured")
ESTIMATOR_METHODS = ("jvp", "vjp")


def dense_layers(fn) -> list[Dense] | None:
    """The dense layers of `fn` if it is an MLP encoder (or `model.encode` of one), else None."""
    if isinstance(fn, MLPEncoder):
        return list(fn.layers)
    owner = getattr(fn, "__self__", None)
    if isinstance(owner, Autoencoder) and getattr(fn, "__name__", "") == "encode":
        return dense_layers(owner.encoder)
    return None


def choose_mode(fn, x: jax.Array) -> str:
    """The cheapest exact route for `fn` on the batch `x` ([B, *input_shape]).

    One dense layer: the closed form. Several dense layers: the structured path. Anything else:
    reverse mode when the code is narrower than the input (k rows to pull back), else forward
    mode (d columns to push forward).
    """
    layers = dense_layers(fn)
    if layers is not None:
        return "closed_form" if len(layers) == 1 else "structured"
    d_in = int(np.prod(x.shape[1:]))
    d_out = int(np.prod(jax.eval_shape(fn, x[0]).shape))
    return "jacrev" if d_out < d_in else "jacfwd"


def _check_batch(fn_name: str, x) -> None:
    if getattr(x, "ndim", 0) < 2:
        raise ValueError(
            f"{fn_name} needs a batch x of shape [B, *input_shape], "
            f"got shape {getattr(x, 'shape', None)}"
        )


def _map_examples(per_example: Callable, args: tuple, chunk_size: int | None) -> jax.Array:
    """vmap over the leading axis, or lax.map in chunks of `chunk_size` to bound memory."""
    if chunk_size is None:
        return jax.vmap(per_example)(*args)
    _checks.check_positive_int("chunk_size", chunk_size)
    return jax.lax.map(lambda a: per_example(*a), args, batch_size=chunk_size)


def _closed_form(layers: list[Dense], x: jax.Array) -> jax.Array:
    """Σ_l g'(a_l)² ‖W_l‖² for h = g(W x + b): J = diag(g'(a)) W, so only row norms of W matter."""
    (layer,) = layers
    x = x.reshape(x.shape[0], -1)
    kernel = layer.kernel[...]  # [d, k]
    deriv = activation_derivative(layer.activation, x @ kernel + layer.bias[...][None])  # [B, k]
    # A matrix product, not a broadcast-and-sum over the batch: XLA:CPU reduces large arrays over
    # their leading axis slowly (see shared/PERFORMANCE.md).
    return (deriv**2) @ jnp.sum(kernel**2, axis=0)  # [B]


def _layer_derivatives(layers: list[Dense], x: jax.Array) -> list[jax.Array]:
    """g_l'(a_l) for every layer, each [B, n_l]."""
    h = x.reshape(x.shape[0], -1)
    derivs = []
    for layer in layers:
        a = h @ layer.kernel[...] + layer.bias[...][None]
        derivs.append(activation_derivative(layer.activation, a))
        h = ACTIVATIONS[layer.activation](a)
    return derivs


@jax.custom_vjp
def gram(w: jax.Array) -> jax.Array:
    """wᵀw [n, n] for w [r, n], with a one-matmul backward.

    Plain autodiff of wᵀw pulls the cotangent back through both operands (two matmuls); since
    the output is symmetric, dw = w (c + cᵀ) needs one.
    """
    return w.T @ w


def _gram_fwd(w):
    return w.T @ w, w


def _gram_bwd(w, ct):
    return (w @ (ct + ct.T),)


gram.defvjp(_gram_fwd, _gram_bwd)


@jax.custom_vjp
def sym_quad(m: jax.Array, g: jax.Array) -> jax.Array:
    """Σ_{k} (m_b g m_bᵀ)_kk = tr(m_b g m_bᵀ) per example for m [B, k, n], g [n, n] SYMMETRIC.

    The forward product p = m g is kept: for symmetric g the cotangent of m is 2 ct_b p_b (no
    matmul), and that of g is Σ_b ct_b m_bᵀ m_b, one [n, B·k] × [B·k, n] matmul. Plain autodiff
    needs three such matmuls. Only valid for symmetric g (the caller passes a Gram matrix).
    """
    return _sym_quad_fwd(m, g)[0]


def _sym_quad_fwd(m, g):
    p = jnp.einsum("bkn,nm->bkm", m, g)  # [B, k, n]
    return jnp.sum(p * m, axis=(1, 2)), (m, p)


def _sym_quad_bwd(res, ct):
    m, p = res
    n = m.shape[-1]
    ct_m = 2 * ct[:, None, None] * p
    weighted = (ct[:, None, None] * m).reshape(-1, n)  # [B·k, n]
    ct_g = weighted.T @ m.reshape(-1, n)  # a matmul: XLA:CPU sums over a leading axis slowly
    return ct_m, ct_g


sym_quad.defvjp(_sym_quad_fwd, _sym_quad_bwd)

STRUCTURED_PRODUCTS = ("direct", "gram")


def structured_product(batch: int, code: int, n1: int, d: int) -> str:
    """ "gram" or "direct": the cheaper last step of the structured route, by multiply-adds.

    direct forms M W_1ᵀ: B·k·n_1·d. gram forms W_1ᵀW_1 once (d·n_1²) and M G: B·k·n_1². The
    backward passes scale alike (2 matmuls of each size with the symmetric custom backward).
    """
    return "gram" if batch * code * n1 * n1 + d * n1 * n1 < batch * code * n1 * d else "direct"


def _code_side_chain(layers: list[Dense], derivs: list[jax.Array]) -> jax.Array:
    """M = D_L W_L ⋯ W_2 D_1, [B, k, n_1], chained from the narrow (code) side."""
    # The leading D_L is diagonal: a broadcast, not a matmul.
    m = derivs[-1][:, :, None] * layers[-1].kernel[...].T[None]  # [B, k, n_{L-1}]
    for layer, deriv in zip(reversed(layers[1:-1]), reversed(derivs[1:-1]), strict=True):
        m = jnp.einsum("bkn,mn->bkm", m * deriv[:, None, :], layer.kernel[...])
    return m * derivs[0][:, None, :]


def _structured(layers: list[Dense], x: jax.Array, *, product: str | None = None) -> jax.Array:
    """Exact ‖D_L W_L ⋯ D_1 W_1‖²_F per example, chained from the narrow (code) side.

    M = D_L W_L ⋯ W_2 D_1 is [B, k, n_1]; then ‖M W_1‖²_F = tr(M G Mᵀ) with G = W_1ᵀW_1 shared
    by the batch (cyclic trace identity) when that is cheaper ("gram", typically d > n_1), else
    the product M W_1 is formed directly ("direct"). `product` forces one of the two.
    """
    if len(layers) == 1:
        return _closed_form(layers, x)
    derivs = _layer_derivatives(layers, x)
    m = _code_side_chain(layers, derivs)  # [B, k, n_1]
    w1 = layers[0].kernel[...]  # [d, n_1]
    d, n1 = w1.shape
    if product is None:
        product = structured_product(x.shape[0], m.shape[1], n1, d)
    _checks.check_choice("product", product, STRUCTURED_PRODUCTS)
    if product == "gram":
        return sym_quad(m, gram(w1))
    return jnp.sum(jnp.einsum("bkn,dn->bkd", m, w1) ** 2, axis=(1, 2))


def _autodiff_sq(fn: Callable, mode: str) -> Callable:
    jac = jax.jacfwd(fn) if mode == "jacfwd" else jax.jacrev(fn)
    return lambda xi: jnp.sum(jac(xi) ** 2)


def frobenius_sq(
    fn: Callable, x: jax.Array, *, mode: str = "auto", chunk_size: int | None = None
) -> jax.Array:
    """Exact ‖∂fn(x_i)/∂x_i‖²_F for every example of a batch.

    Args:
      fn: maps ONE example [*input_shape] to a vector [k]; pass an `MLPEncoder` (or
        `model.encode`) to enable the closed-form and structured routes.
      x: batch [B, *input_shape].
      mode: "auto" (cheapest exact route from the shapes, see `choose_mode`), "jacfwd",
        "jacrev", "closed_form" (one dense layer), or "structured" (MLP encoders).
      chunk_size: evaluate the batch in chunks of this many examples (`jax.lax.map`), so the
        [B, k, d] Jacobian never has to fit in memory at once. None: the whole batch at once.

    Returns:
      [B] squared Frobenius norms (exact up to floating-point round-off).
    """
    _checks.check_choice("mode", mode, MODES)
    _check_batch("frobenius_sq", x)
    if mode == "auto":
        mode = choose_mode(fn, x)
    if mode in ("closed_form", "structured"):
        layers = dense_layers(fn)
        if layers is None:
            raise ValueError(
                f"mode {mode!r} needs an MLPEncoder (or model.encode of an MLP autoencoder), "
                f"got {fn!r}; use mode='auto', 'jacfwd' or 'jacrev' for other encoders"
            )
        if mode == "closed_form" and len(layers) != 1:
            raise ValueError(
                f"mode 'closed_form' holds for one dense layer, this encoder has {len(layers)}; "
                "use mode='structured' or 'auto'"
            )
        route = _closed_form if mode == "closed_form" else _structured
        if chunk_size is None:
            return route(layers, x)
        return _map_examples(lambda xi: route(layers, xi[None])[0], (x,), chunk_size)
    return _map_examples(_autodiff_sq(fn, mode), (x,), chunk_size)


def jacobian(fn: Callable, x: jax.Array, *, mode: str = "auto") -> jax.Array:
    """Per-example Jacobians [B, k, *input_shape] by jacfwd or jacrev (for spectra and plots)."""
    _checks.check_choice("mode", mode, ("auto", "jacfwd", "jacrev"))
    _check_batch("jacobian", x)
    if mode == "auto":
        d_in = int(np.prod(x.shape[1:]))
        d_out = int(np.prod(jax.eval_shape(fn, x[0]).shape))
        mode = "jacrev" if d_out < d_in else "jacfwd"
    jac = jax.jacfwd(fn) if mode == "jacfwd" else jax.jacrev(fn)
    return jax.vmap(jac)(x)


def frobenius_sq_diff(
    fn: Callable,
    x: jax.Array,
    x_other: jax.Array,
    *,
    mode: str = "auto",
    chunk_size: int | None = None,
) -> jax.Array:
    """Exact ‖J(x_i) − J(x'_i)‖²_F per example, J the Jacobian of `fn` (CAE+H's second term).

    For one dense layer J(x) − J(x') = diag(g'(a) − g'(a')) W, a closed form; otherwise the two
    Jacobians are formed by jacfwd or jacrev. mode="auto": the closed form for one dense layer,
    jacrev for deeper MLPs, otherwise jacfwd/jacrev chosen from the shapes.
    """
    _checks.check_choice("mode", mode, ("auto", "jacfwd", "jacrev", "closed_form"))
    _check_batch("frobenius_sq_diff", x)
    if x.shape != x_other.shape:
        raise ValueError(f"x and x_other must have one shape, got {x.shape} and {x_other.shape}")
    layers = dense_layers(fn)
    if mode == "auto":
        mode = "closed_form" if layers is not None and len(layers) == 1 else choose_mode(fn, x)
        mode = "jacrev" if mode == "structured" else mode
    if mode == "closed_form":
        if layers is None or len(layers) != 1:
            raise ValueError("mode 'closed_form' needs a one-layer MLPEncoder")
        (layer,) = layers

        def per_example(xi, xo):
            kernel = layer.kernel[...]
            da = activation_derivative(layer.activation, xi.reshape(-1) @ kernel + layer.bias[...])
            db = activation_derivative(layer.activation, xo.reshape(-1) @ kernel + layer.bias[...])
            return (da - db) ** 2 @ jnp.sum(kernel**2, axis=0)

        return _map_examples(per_example, (x, x_other), chunk_size)
    jac = jax.jacfwd(fn) if mode == "jacfwd" else jax.jacrev(fn)
    return _map_examples(lambda xi, xo: jnp.sum((jac(xi) - jac(xo)) ** 2), (x, x_other), chunk_size)


def frobenius_sq_estimate(
    fn: Callable,
    x: jax.Array,
    key: jax.Array,
    *,
    num_probes: int = 1,
    method: str = "jvp",
) -> jax.Array:
    """ESTIMATE of ‖J(x_i)‖²_F by random projections (Hutchinson): unbiased, not exact.

    method="jvp": mean over probes v ~ N(0, I_d) of ‖J v‖² (one forward-mode product each);
    method="vjp": mean over probes u ~ N(0, I_k) of ‖Jᵀ u‖² (one reverse-mode product each).
    Both have expectation tr(JᵀJ) = ‖J‖²_F.

    Args:
      fn: maps one example to a vector.
      x: batch [B, *input_shape].
      key: PRNG key for the probes.
      num_probes: probes per example; the variance falls as 1/num_probes.
      method: "jvp" or "vjp".

    Returns:
      [B] estimates.
    """
    _checks.check_choice("method", method, ESTIMATOR_METHODS)
    _checks.check_positive_int("num_probes", num_probes)
    _check_batch("frobenius_sq_estimate", x)
    keys = jax.random.split(key, x.shape[0])

    def per_example(xi, ki):
        if method == "jvp":
            probes = jax.random.normal(ki, (num_probes, *xi.shape), xi.dtype)
            jv = jax.vmap(lambda v: jax.jvp(fn, (xi,), (v,))[1])(probes)
            return jnp.mean(jnp.sum(jv.reshape(num_probes, -1) ** 2, axis=1))
        out, pullback = jax.vjp(fn, xi)
        probes = jax.random.normal(ki, (num_probes, *out.shape), out.dtype)
        jtu = jax.vmap(lambda u: pullback(u)[0])(probes)
        return jnp.mean(jnp.sum(jtu.reshape(num_probes, -1) ** 2, axis=1))

    return jax.vmap(per_example)(x, keys)
