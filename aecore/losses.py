"""Reconstruction losses, one value per example; the caller reduces over the batch.

Squared error pairs with a linear decoder (real data); cross-entropy with a sigmoid decoder
(data in [0, 1]) and is computed from the decoder's logits so it never overflows.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from aecore import _checks

LOSSES = ("squared_error", "cross_entropy")


def _check_pair(name: str, pred: jax.Array, x: jax.Array) -> None:
    if pred.shape != x.shape:
        raise ValueError(f"{name}: prediction shape {pred.shape} != target shape {x.shape}")
    if x.ndim < 1:
        raise ValueError(f"{name} needs a batch [B, ...], got a scalar")


def squared_error(x_hat: jax.Array, x: jax.Array) -> jax.Array:
    """Σ_j (x̂_j − x_j)² per example.

    Args:
      x_hat: reconstructions [B, *input_shape].
      x: clean targets [B, *input_shape].

    Returns:
      [B] per-example squared errors (summed, not averaged, over the input dimensions).
    """
    _check_pair("squared_error", x_hat, x)
    return jnp.sum(((x_hat - x) ** 2).reshape(x.shape[0], -1), axis=1)


def sigmoid_cross_entropy(logits: jax.Array, x: jax.Array) -> jax.Array:
    """−Σ_j [x_j log x̂_j + (1 − x_j) log(1 − x̂_j)] per example, with x̂ = sigmoid(logits).

    Written as softplus(z) − x z, which equals the expression above and stays finite for any
    logit z (log-sigmoid never evaluates log(0)). Targets must lie in [0, 1] (checked when the
    values are concrete, i.e. outside `jax.jit`).

    Args:
      logits: decoder pre-outputs [B, *input_shape] (`model.decode_logits`).
      x: targets in [0, 1], [B, *input_shape].

    Returns:
      [B] per-example cross-entropies. Reference: Bengio et al., "Representation Learning", §7.2.
    """
    _check_pair("sigmoid_cross_entropy", logits, x)
    _checks.check_unit_interval("cross-entropy targets x", x)
    per_input = jax.nn.softplus(logits) - x * logits
    return jnp.sum(per_input.reshape(x.shape[0], -1), axis=1)
