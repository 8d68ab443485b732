"""Training: one jitted step for every variant (objective + optax), and the loop around it.

The step is pure: it takes and returns model and optimizer state, so it runs unchanged on CPU,
GPU, TPU, and on sharded inputs.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax

from aecore.objective import Objective, objective_terms


def make_train_step(
    objective: Objective, optimizer: optax.GradientTransformation, *, donate: bool = True
) -> Callable:
    """Builds `step(model, opt_state, x, key) -> (model, opt_state, metrics)`, jitted once.

    Args:
      objective: what to minimise (loss, regularizers, corruption).
      optimizer: any optax transformation.
      donate: donate model and optimizer buffers to the step (in-place update on accelerators).

    Returns:
      The jitted step. `metrics` holds the total `loss`, each objective term, `grad_norm`, and
      `finite` (False if the loss or any gradient is NaN/inf; the update is then still returned,
      so the caller must check `finite` before keeping the new state).
    """

    def step(model, opt_state, x, key):
        (loss, terms), grads = jax.value_and_grad(
            lambda m: objective_terms(m, x, key, objective), has_aux=True
        )(model)
        updates, opt_state = optimizer.update(grads, opt_state, model)
        model = optax.apply_updates(model, updates)
        grad_norm = optax.global_norm(grads)
        finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
        return model, opt_state, {"loss": loss, **terms, "grad_norm": grad_norm, "finite": finite}

    return jax.jit(step, donate_argnums=(0, 1) if donate else ())
