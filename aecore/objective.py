"""One training objective for every autoencoder variant: a reconstruction loss plus any set of
weighted regularizers and an input corruption, described by a frozen `Objective`.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from aecore import _checks, jacobian, losses, regularizers


@dataclasses.dataclass(frozen=True)
class Objective:
    """What a variant minimises. A weight of 0 switches its term off (and it is not computed).

    Attributes:
      loss: "squared_error" (linear decoder, real data) or "cross_entropy" (sigmoid decoder,
        data in [0, 1]; uses the decoder's logits).
      weight_decay: λ of λ Σ‖W‖²_F (biases excluded).
      l1: λ of the L1 sparsity λ Σ_i |h_i| on the code.
      kl: β of the KL sparsity β Σ_l KL(ρ‖ρ̂_l) on the code; `rho` is ρ ∈ (0, 1).
      contractive: λ of the contractive penalty λ ‖J_x h‖²_F at the clean input (exact unless
        `contractive_probes` > 0).
      contractive_probes: 0 (default) computes the contractive term exactly. > 0 replaces it by
        an ESTIMATE, not the exact value: `jacobian.frobenius_sq_estimate(model.encode, x, key,
        num_probes=contractive_probes)` (Hutchinson, its default method "jvp": unbiased, one
        forward-mode product per probe and example, variance ∝ 1/contractive_probes). The
        probes get their own key, split off only when this is > 0. `jacobian_mode` and
        `chunk_size` do not apply to the estimate.
      jacobian_mode: route of the contractive terms (see `aecore.jacobian.MODES`).
      chunk_size: evaluate the Jacobians of the contractive and higher-order terms in chunks
        of this many examples (memory bound; same values).
      higher_order: γ of CAE+H's γ E‖J(x) − J(x+ε)‖²_F, with ε ~ N(0, higher_order_sigma²)
        and `higher_order_samples` Monte-Carlo draws.
      corruption: "none", "mask" (drop probability `corruption_level`) or "gaussian"
        (std `corruption_level`); the reconstruction target stays the clean input.
    """

    loss: str = "squared_error"
    weight_decay: float = 0.0
    l1: float = 0.0
    kl: float = 0.0
    rho: float = 0.05
    contractive: float = 0.0
    contractive_probes: int = 0
    jacobian_mode: str = "auto"
    chunk_size: int | None = None
    higher_order: float = 0.0
    higher_order_sigma: float = 0.1
    higher_order_samples: int = 4
    corruption: str = "none"
    corruption_level: float = 0.0

    def __post_init__(self):
        _checks.check_choice("loss", self.loss, losses.LOSSES)
        for name in ("weight_decay", "l1", "kl", "contractive", "higher_order"):
            _checks.check_nonnegative(name, getattr(self, name))
        p = self.contractive_probes
        if isinstance(p, bool) or not isinstance(p, int | np.integer) or p < 0:
            raise ValueError(f"contractive_probes must be an integer >= 0, got {p!r}")
        _checks.check_open_unit("rho", self.rho)
        _checks.check_choice("jacobian_mode", self.jacobian_mode, jacobian.MODES)
        if self.chunk_size is not None:
            _checks.check_positive_int("chunk_size", self.chunk_size)
        _checks.check_nonnegative("higher_order_sigma", self.higher_order_sigma)
        _checks.check_positive_int("higher_order_samples", self.higher_order_samples)
        _checks.check_choice("corruption", self.corruption, regularizers.CORRUPTIONS)
        if self.corruption == "mask":
            _checks.check_half_open_unit("corruption_level (mask q)", self.corruption_level)
        else:
            _checks.check_nonnegative("corruption_level", self.corruption_level)


def reconstruction(model, x: jax.Array, h: jax.Array, *, loss: str) -> jax.Array:
    """Per-example reconstruction loss [B] of the clean target x from codes h [B, d_z]."""
    logits = jax.vmap(model.decode_logits)(h)
    if loss == "cross_entropy":
        return losses.sigmoid_cross_entropy(logits, x)
    x_hat = jax.vmap(model.decode)(h) if model.output != "identity" else logits
    return losses.squared_error(x_hat, x)


def objective_terms(
    model, x: jax.Array, key: jax.Array, objective: Objective
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Total loss (scalar, batch mean) and each of its terms, for a batch x [B, *input_shape].

    Per-example terms are averaged over the batch; weight decay and KL are added once.
    """
    if objective.contractive_probes > 0:  # split only here: the exact objective's keys stay
        key, k_probe = jax.random.split(key)
    k_corrupt, k_ho = jax.random.split(key)
    x_tilde = regularizers.corrupt(
        k_corrupt, x, kind=objective.corruption, level=objective.corruption_level
    )
    h = jax.vmap(model.encode)(x_tilde)  # [B, d_z]
    terms = {"reconstruction": jnp.mean(reconstruction(model, x, h, loss=objective.loss))}
    if objective.weight_decay > 0:
        terms["weight_decay"] = regularizers.weight_decay(model, weight=objective.weight_decay)
    if objective.l1 > 0:
        terms["l1"] = jnp.mean(regularizers.l1_sparsity(h, weight=objective.l1))
    if objective.kl > 0:
        terms["kl"] = regularizers.kl_sparsity(h, rho=objective.rho, weight=objective.kl)
    if objective.contractive > 0 and objective.contractive_probes > 0:
        estimate = jacobian.frobenius_sq_estimate(  # [B], an ESTIMATE of ‖J‖²_F
            model.encode, x, k_probe, num_probes=objective.contractive_probes
        )
        terms["contractive"] = objective.contractive * jnp.mean(estimate)
    elif objective.contractive > 0:
        terms["contractive"] = jnp.mean(
            regularizers.contractive(
                model.encode,
                x,
                weight=objective.contractive,
                mode=objective.jacobian_mode,
                chunk_size=objective.chunk_size,
            )
        )
    if objective.higher_order > 0:
        mode = objective.jacobian_mode
        terms["higher_order"] = jnp.mean(
            regularizers.contractive_higher_order(
                model.encode,
                x,
                k_ho,
                weight=objective.higher_order,
                sigma=objective.higher_order_sigma,
                num_corruptions=objective.higher_order_samples,
                mode="auto" if mode in ("structured", "closed_form") else mode,
                chunk_size=objective.chunk_size,
            )
        )
    return sum(terms.values()), terms
