"""Regularizers of autoencoders, each a small pure function with a keyword-only scale `weight`.

Per-example penalties return [B] (the caller averages); batch-level ones (KL sparsity) and
parameter ones (weight decay) return a scalar. Corruptions return x_tilde; the target stays x.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from aecore import _checks, jacobian
from aecore.models import weight_arrays

# ρ̂ is clipped into [KL_EPS, 1 − KL_EPS] so that KL(ρ‖ρ̂) stays finite when a unit is always off
# (ρ̂ = 0) or always on (ρ̂ = 1), e.g. ReLU codes or saturated sigmoids.
KL_EPS = 1e-6


def weight_decay(model, *, weight: float) -> jax.Array:
    """λ Σ_W ‖W‖²_F over every weight matrix and conv kernel; biases are NOT included.

    A tied model holds each weight once, so it is counted once. Returns a scalar.
    """
    _checks.check_nonnegative("weight_decay weight", weight)
    return weight * sum(jnp.sum(w**2) for w in weight_arrays(model))


def l1_sparsity(h: jax.Array, *, weight: float) -> jax.Array:
    """λ Σ_i |h_i| over a hidden layer's activations, per example: h [B, k] -> [B]."""
    _checks.check_nonnegative("l1 weight", weight)
    return weight * jnp.sum(jnp.abs(h.reshape(h.shape[0], -1)), axis=1)


def kl_divergence(rho: float, rho_hat: jax.Array) -> jax.Array:
    """KL(ρ‖ρ̂) = ρ log(ρ/ρ̂) + (1 − ρ) log((1 − ρ)/(1 − ρ̂)), elementwise, ρ̂ clipped (KL_EPS)."""
    _checks.check_open_unit("rho", rho)
    rho_hat = jnp.clip(rho_hat, KL_EPS, 1 - KL_EPS)
    return rho * jnp.log(rho / rho_hat) + (1 - rho) * jnp.log((1 - rho) / (1 - rho_hat))


def kl_sparsity(h: jax.Array, *, rho: float, weight: float) -> jax.Array:
    """β Σ_l KL(ρ ‖ ρ̂_l), ρ̂_l the batch-mean activation of unit l (Ng, "Sparse autoencoder").

    The derivative with respect to ρ̂_l is −ρ/ρ̂_l + (1 − ρ)/(1 − ρ̂_l) inside the clipping range.
    Activations must lie in [0, 1] (sigmoid codes) for ρ̂ to be a firing rate.

    Args:
      h: codes [B, k].
      rho: target mean activation, in (0, 1).
      weight: β >= 0.

    Returns:
      A scalar (the penalty is defined on the batch, not per example).
    """
    _checks.check_open_unit("rho", rho)
    _checks.check_nonnegative("kl weight", weight)
    rho_hat = jnp.mean(h.reshape(h.shape[0], -1), axis=0)
    return weight * jnp.sum(kl_divergence(rho, rho_hat))


def mask_noise(key: jax.Array, x: jax.Array, *, q: float) -> jax.Array:
    """Masking noise: each input set to 0 with probability q, kept unchanged otherwise.

    No 1/(1 − q) rescaling (Vincent et al. 2008): the DAE learns to fill in the zeros.
    """
    _checks.check_half_open_unit("q (masking drop probability)", q)
    keep = jax.random.bernoulli(key, 1 - q, x.shape)
    return jnp.where(keep, x, jnp.zeros_like(x))


def gaussian_noise(key: jax.Array, x: jax.Array, *, sigma: float) -> jax.Array:
    """Additive isotropic Gaussian noise: x + ε, ε ~ N(0, σ² I)."""
    _checks.check_nonnegative("sigma (Gaussian noise std)", sigma)
    return x + sigma * jax.random.normal(key, x.shape, x.dtype)


CORRUPTIONS = ("none", "mask", "gaussian")


def corrupt(key: jax.Array, x: jax.Array, *, kind: str, level: float) -> jax.Array:
    """x_tilde by `kind` ("none", "mask" with q = level, "gaussian" with σ = level)."""
    _checks.check_choice("corruption", kind, CORRUPTIONS)
    if kind == "mask":
        return mask_noise(key, x, q=level)
    if kind == "gaussian":
        return gaussian_noise(key, x, sigma=level)
    return x


def contractive(
    encode: Callable,
    x: jax.Array,
    *,
    weight: float,
    mode: str = "auto",
    chunk_size: int | None = None,
) -> jax.Array:
    """λ ‖J_x h(x)‖²_F per example, computed exactly (Rifai et al. 2011, CAE).

    Args:
      encode: maps one example to its code (pass `model.encode` or the `MLPEncoder` to enable
        the closed-form and structured routes).
      x: batch [B, *input_shape] (the clean inputs).
      weight: λ >= 0.
      mode, chunk_size: see `aecore.jacobian.frobenius_sq`.

    Returns:
      [B] penalties.
    """
    _checks.check_nonnegative("contractive weight", weight)
    return weight * jacobian.frobenius_sq(encode, x, mode=mode, chunk_size=chunk_size)


def contractive_higher_order(
    encode: Callable,
    x: jax.Array,
    key: jax.Array,
    *,
    weight: float,
    sigma: float,
    num_corruptions: int = 4,
    mode: str = "auto",
    chunk_size: int | None = None,
) -> jax.Array:
    """γ E_ε ‖J(x) − J(x + ε)‖²_F, ε ~ N(0, σ² I), per example (Rifai et al. 2011, CAE+H).

    The expectation is a Monte-Carlo mean over `num_corruptions` draws; each ‖·‖²_F is exact.
    This is the second-order term only: CAE+H adds it to `contractive(...)`. `mode` and
    `chunk_size` as in `jacobian.frobenius_sq_diff`.

    Returns:
      [B] penalties.
    """
    _checks.check_nonnegative("higher-order weight", weight)
    _checks.check_nonnegative("higher-order sigma", sigma)
    _checks.check_positive_int("num_corruptions", num_corruptions)
    eps = sigma * jax.random.normal(key, (num_corruptions, *x.shape), x.dtype)
    diffs = jax.vmap(
        lambda e: jacobian.frobenius_sq_diff(encode, x, x + e, mode=mode, chunk_size=chunk_size)
    )(eps)
    return weight * jnp.mean(diffs, axis=0)
