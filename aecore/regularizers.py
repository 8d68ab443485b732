"""Regularizers of autoencoders, each a small pure function with a keyword-only scale `weight`.

Per-example penalties return [B] (the caller averages); batch-level ones (KL sparsity) and
parameter ones (weight decay) return a scalar. Corruptions return x_tilde; the target stays x.
`Term` wraps a penalty for an `Objective`; the built-in terms below and user terms are the same.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp

from aecore import _checks, jacobian
from aecore.jacobian import estimate
from aecore.models import Model, weight_arrays

# ρ̂ is clipped into [KL_EPS, 1 − KL_EPS] so that KL(ρ‖ρ̂) stays finite when a unit is always off
# (ρ̂ = 0) or always on (ρ̂ = 1), e.g. ReLU codes or saturated sigmoids.
KL_EPS = 1e-6


def weight_decay(model: Model, *, weight: float) -> jax.Array:
    """λ Σ_W ‖W‖²_F over every weight matrix and conv kernel; biases are NOT included.

    A tied model holds each weight once, so it is counted once. Returns a scalar.
    """
    _checks.check_nonnegative("weight_decay weight", weight)
    return weight * jnp.asarray(sum(jnp.sum(w**2) for w in weight_arrays(model)))


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
      encode: maps one example to its code (e.g. `model.encode`, any module or function).
      x: batch [B, *input_shape] (the clean inputs).
      weight: λ >= 0.
      mode: the exact route, see `aecore.jacobian.frobenius_sq`.
      chunk_size: examples per chunk, see `aecore.jacobian.frobenius_sq`.

    Returns:
      [B] penalties.
    """
    _checks.check_nonnegative("contractive weight", weight)
    return weight * jacobian.frobenius_sq(encode, x, mode=mode, chunk_size=chunk_size)


HIGHER_ORDER_FORMS = ("monte_carlo", "expected", "hessian")


def contractive_higher_order(
    encode: Callable,
    x: jax.Array,
    key: jax.Array | None,
    *,
    weight: float,
    sigma: float,
    num_corruptions: int = 4,
    mode: str = "auto",
    chunk_size: int | None = None,
    form: str = "monte_carlo",
) -> jax.Array:
    """γ E_ε ‖J(x) − J(x + ε)‖²_F, ε ~ N(0, σ² I), per example (Rifai et al. 2011, CAE+H).

    This is the second-order term only: CAE+H adds it to `contractive(...)`.

    Args:
      encode: maps one example to its code.
      x: batch [B, *input_shape].
      key: draws ε for form="monte_carlo" (unused by the exact forms; may be None there).
      weight: γ >= 0.
      sigma: σ >= 0 of the corruption.
      num_corruptions: draws of ε for form="monte_carlo".
      mode: the exact Jacobian route, as in `jacobian.frobenius_sq_diff`.
      chunk_size: examples per chunk, as in `jacobian.frobenius_sq_diff`.
      form: "monte_carlo" (a mean over `num_corruptions` draws, each ‖·‖²_F exact: noisy),
        "expected" (the expectation itself, no noise: one elementwise layer only, see
        `jacobian.frobenius_sq_diff_expected`) or "hessian" (its σ → 0 limit
        σ²‖∂J/∂x‖²_F, exact for any encoder: `jacobian.hessian_frobenius_sq`).

    Returns:
      [B] penalties.
    """
    _checks.check_nonnegative("higher-order weight", weight)
    _checks.check_nonnegative("higher-order sigma", sigma)
    _checks.check_positive_int("num_corruptions", num_corruptions)
    _checks.check_choice("higher-order form", form, HIGHER_ORDER_FORMS)
    if form == "expected":
        return weight * jacobian.frobenius_sq_diff_expected(
            encode, x, sigma=sigma, chunk_size=chunk_size
        )
    if form == "hessian":
        hess = jacobian.hessian_frobenius_sq(encode, x, chunk_size=chunk_size)
        return weight * sigma**2 * hess
    if key is None:
        raise ValueError("contractive_higher_order with form='monte_carlo' needs a key, got None")
    eps = sigma * jax.random.normal(key, (num_corruptions, *x.shape), x.dtype)
    diffs = jax.vmap(
        lambda e: jacobian.frobenius_sq_diff(encode, x, x + e, mode=mode, chunk_size=chunk_size)
    )(eps)
    return weight * jnp.mean(diffs, axis=0)


# --------------------------------------------------------------------------------------------
# Terms: the one way a penalty enters an objective (built-in and user-written alike)

TermFn = Callable[..., jax.Array]
RESERVED_NAMES = ("loss", "reconstruction", "grad_norm", "finite", "eval_reconstruction")


@dataclasses.dataclass(frozen=True)
class Term:
    """A weighted penalty: `weight * mean_b fn(model, x, x_tilde, h, key)` is added to the loss.

    `fn` is a plain pure function of
      - `model`: the model in eval mode (`models.eval_mode`: Dropout off, BatchNorm running
        averages), so a Jacobian penalty is the exact ‖J‖²_F of the deterministic map;
      - `x` [B, *input_shape]: the clean batch; `x_tilde`: the corrupted batch the encoder saw;
      - `h` [B, d_z]: the codes of `x_tilde` from the training-mode forward pass;
      - `key`: a PRNG key of its own (see `Objective` for how it is derived).
    It returns per-example values [B] (averaged over the batch) or one scalar (a batch-level or
    parameter penalty, used as is). Its value times `weight` is logged under `name`. It may
    also return a pair (values, logs): `logs` maps names to scalars that are logged as
    `{name}_{key}` beside the term and are NOT added to the loss (e.g. an estimate's error).

    Attributes:
      name: the metric name (unique within an objective; not one of RESERVED_NAMES).
      fn: the pure function above.
      weight: the scale, a finite number >= 0 (0 switches the term off: it is not computed).
    """

    name: str
    fn: TermFn
    weight: float = 1.0

    def __post_init__(self):
        if not isinstance(self.name, str) or not self.name.isidentifier():
            raise ValueError(f"term name must be an identifier string, got {self.name!r}")
        if self.name in RESERVED_NAMES:
            raise ValueError(f"term name {self.name!r} is reserved; reserved: {RESERVED_NAMES}")
        if not callable(self.fn):
            raise TypeError(f"term {self.name!r}: fn must be callable, got {self.fn!r}")
        _checks.check_nonnegative(f"term {self.name!r} weight", self.weight)

    def __call__(
        self, model: Model, x: jax.Array, x_tilde: jax.Array, h: jax.Array, key: jax.Array
    ) -> jax.Array:
        """weight * (batch mean of the per-example values, or the scalar), a scalar."""
        return self.with_logs(model, x, x_tilde, h, key)[0]

    def with_logs(
        self, model: Model, x: jax.Array, x_tilde: jax.Array, h: jax.Array, key: jax.Array
    ) -> tuple[jax.Array, dict[str, jax.Array]]:
        """(the value `__call__` returns, the term's logged-only scalars by metric name)."""
        out = self.fn(model, x, x_tilde, h, key)
        logs: dict[str, jax.Array]
        values, logs = out if isinstance(out, tuple) else (out, {})
        values = jnp.asarray(values)
        shape = values.shape
        if shape == (x.shape[0],):
            values = jnp.mean(values)
        elif shape != ():
            raise ValueError(
                f"term {self.name!r} must return per-example values of shape ({x.shape[0]},) "
                f"or a scalar, got shape {shape}"
            )
        return self.weight * values, {f"{self.name}_{k}": v for k, v in logs.items()}


def weight_decay_term(weight: float) -> Term:
    """Term "weight_decay": λ Σ‖W‖²_F over the `nnx.Param` weights (biases excluded), scalar."""
    return Term(
        "weight_decay", lambda model, x, x_tilde, h, key: weight_decay(model, weight=1.0), weight
    )


def l1_term(weight: float) -> Term:
    """Term "l1": λ Σ_i |h_i| on the code, per example."""
    return Term("l1", lambda model, x, x_tilde, h, key: l1_sparsity(h, weight=1.0), weight)


def kl_term(weight: float, *, rho: float) -> Term:
    """Term "kl": β Σ_l KL(ρ‖ρ̂_l) on the batch's codes, scalar."""
    _checks.check_open_unit("rho", rho)
    return Term("kl", lambda model, x, x_tilde, h, key: kl_sparsity(h, rho=rho, weight=1.0), weight)


def _encoder_fn(model, layer: Callable | None) -> Callable:
    """One-example function whose Jacobian a penalty takes: `model.encode`, or `layer(model, x)`."""
    if layer is None:
        return model.encode
    return lambda x1: layer(model, x1)


def contractive_term(
    weight: float,
    *,
    layer: Callable | None = None,
    mode: str = "auto",
    chunk_size: int | None = None,
    probes: int = 0,
    estimator: str = "jvp",
    name: str = "contractive",
) -> Term:
    """Term `name`: λ ‖J_x f(x)‖²_F at the clean input, per example, exact unless `probes` > 0.

    Args:
      weight: λ >= 0.
      layer: None penalizes the code, `model.encode`; or a function `layer(model, x) -> vector`
        of ONE example, e.g. `lambda m, x: m.encoder.hidden(x)`, to penalize a chosen hidden
        layer of a deep encoder.
      mode: the exact route, see `aecore.jacobian.frobenius_sq`.
      chunk_size: examples per chunk, see `aecore.jacobian.frobenius_sq`.
      probes: > 0 replaces the exact value by an ESTIMATE with that many probes
        (`jacobian.frobenius_sq_estimate`), using the term's key.
      estimator: the estimate's method (`jacobian.ESTIMATOR_METHODS`; default Hutchinson by
        jvp). Where it has a standard error (see `estimate.degrees_of_freedom`) the batch
        mean's estimated relative error is logged as `{name}_rel_error` (not in the loss).
      name: the metric name (use another one for a second contractive term).
    """
    _checks.check_int("contractive_probes", probes)
    _checks.check_choice("contractive_estimator", estimator, jacobian.ESTIMATOR_METHODS)
    with_error = probes > 0 and estimate.degrees_of_freedom(estimator, probes) > 0

    def fn(model, x, x_tilde, h, key):
        encode = _encoder_fn(model, layer)
        if probes == 0:
            return jacobian.frobenius_sq(encode, x, mode=mode, chunk_size=chunk_size)
        out = jacobian.frobenius_sq_estimate(
            encode, x, key, num_probes=probes, method=estimator, with_error=with_error
        )
        if not with_error:
            return out
        values, se = out
        return values, {"rel_error": jax.lax.stop_gradient(estimate.relative_error(values, se))}

    return Term(name, fn, weight)


def higher_order_term(
    weight: float,
    *,
    sigma: float,
    num_corruptions: int = 4,
    layer: Callable | None = None,
    mode: str = "auto",
    chunk_size: int | None = None,
    form: str = "monte_carlo",
) -> Term:
    """Term "higher_order": CAE+H's γ E_ε ‖J(x) − J(x + ε)‖²_F per example, by `form` (see
    `contractive_higher_order`; the Monte-Carlo form's key draws ε)."""
    _checks.check_choice("higher_order_mode", form, HIGHER_ORDER_FORMS)
    _checks.check_nonnegative("higher-order sigma", sigma)
    _checks.check_positive_int("num_corruptions", num_corruptions)
    _checks.check_choice("jacobian mode", mode, jacobian.MODES)  # every route takes both batches

    def fn(model, x, x_tilde, h, key):
        return contractive_higher_order(
            _encoder_fn(model, layer),
            x,
            key,
            weight=1.0,
            sigma=sigma,
            num_corruptions=num_corruptions,
            mode=mode,
            chunk_size=chunk_size,
            form=form,
        )

    return Term("higher_order", fn, weight)
