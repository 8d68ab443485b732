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


# ---------------------------------------------------------------------------------------------
# The decoder's geometry (pullback metric G = J_gᵀJ_g at the codes) and the reconstruction map


def isometry(g: jax.Array, *, weight: float, scale: float | None = None) -> jax.Array:
    """λ ‖G − c I‖²_F per code: a flat (c fixed) or conformal (c = tr G / k) decoder.

    Flat latent spaces (Chen et al. 2020, "Learning flat latent manifolds with VAEs") and FlatVI
    push the decoder's pullback metric G towards a multiple of the identity, so that code
    distances are output distances (up to c). The metric comes from
    `jacobian.pullback_metric(decode, z)` (exact, k JVPs per code).

    Args:
      g: pullback metrics [B, k, k].
      weight: λ >= 0.
      scale: c >= 0 fixed, or None for the scale-free c = tr G_i / k of each code (penalizes
        only G's departure from a multiple of I).

    Returns:
      [B] penalties.
    """
    _checks.check_nonnegative("isometry weight", weight)
    if scale is not None:
        _checks.check_nonnegative("isometry scale", scale)
    k = g.shape[-1]
    if scale is None:
        c = jnp.trace(g, axis1=1, axis2=2)[:, None, None] / k
    else:
        c = jnp.asarray(scale, g.dtype)
    diff = g - c * jnp.eye(k, dtype=g.dtype)[None]
    return weight * jnp.sum(diff**2, axis=(1, 2))


def mixup_codes(key: jax.Array, z: jax.Array, *, eta: float = 0.2) -> jax.Array:
    """IRVAE's augmented codes t z_i + (1 − t) z_π(i): π a random permutation of the batch and
    t ~ U[−η, 1 + η] per code (Lee et al., ICLR 2022, `relaxed_distortion_measure`, η = 0.2),
    so the metric is regularized between and a little beyond the data's codes. z [B, k]."""
    _checks.check_nonnegative("distortion eta", eta)
    k_perm, k_t = jax.random.split(key)
    partner = z[jax.random.permutation(k_perm, z.shape[0])]
    t = jax.random.uniform(k_t, (z.shape[0], 1), z.dtype, -eta, 1 + eta)
    return t * z + (1 - t) * partner


def relaxed_distortion(g: jax.Array, *, weight: float) -> jax.Array:
    """λ E[tr G²] / E[tr G]², IRVAE's relaxed distortion (Lee et al., ICLR 2022), exact.

    The batch-ratio form of IRVAE's code: the mean over the batch of tr G_i² divided by the
    square of the mean of tr G_i (not a mean of per-code ratios), here with exact traces from
    G [B, k, k] where IRVAE estimates both with one Gaussian probe per code
    (`jacobian.relaxed_distortion_estimate`). It is scale-free and at its minimum 1/k when
    every G_i is the same multiple of I (a scaled isometry). IRVAE evaluates it on
    `mixup_codes`. Returns a scalar (a batch-level penalty).
    """
    _checks.check_nonnegative("distortion weight", weight)
    return weight * jacobian.relaxed_distortion(g)


def logdet_variance(logdet: jax.Array, *, weight: float) -> jax.Array:
    """λ Var_b(log det G_b) over the batch (Nazari et al. 2023, Geometric Autoencoders).

    Makes the decoder's volume change the same across the codes, so that code-space density
    reflects data density. `logdet` [B] from `jacobian.pullback_logdet` (a QR of J_g: stable,
    where Geometric AE's `logdet` of G squares J's condition number). Returns a scalar.
    """
    _checks.check_nonnegative("logdet_variance weight", weight)
    return weight * jnp.var(logdet)


def reconstruction_contractive(
    encode: Callable, decode: Callable, x: jax.Array, *, weight: float, mode: str = "auto"
) -> jax.Array:
    """λ ‖∂r(x)/∂x‖²_F per example, r = decode ∘ encode (Alain & Bengio 2014), exact.

    Penalizing the reconstruction's Jacobian makes r(x) − x estimate σ² ∂log p(x)/∂x for a
    small penalty (their Theorem 1). Computed as tr(G_dec(h) · J_f J_fᵀ)
    (`jacobian.reconstruction_frobenius_sq`).

    Args:
      encode: maps one example to its code [k].
      decode: maps one code to one example.
      x: batch [B, *input_shape].
      weight: λ >= 0.
      mode: see `jacobian.reconstruction_frobenius_sq`.

    Returns:
      [B] penalties.
    """
    _checks.check_nonnegative("reconstruction_contractive weight", weight)
    return weight * jacobian.reconstruction_frobenius_sq(encode, decode, x, mode=mode)


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


def isometry_term(
    weight: float, *, scale: float | None = None, chunk_size: int | None = None
) -> Term:
    """Term "isometry": λ ‖G − c I‖²_F (`isometry`) per example, G the exact pullback metric of
    `model.decode` at the batch's codes h."""
    if scale is not None:
        _checks.check_nonnegative("isometry_scale", scale)

    def fn(model, x, x_tilde, h, key):
        g = jacobian.pullback_metric(model.decode, h, chunk_size=chunk_size)
        return isometry(g, weight=1.0, scale=scale)

    return Term("isometry", fn, weight)


def distortion_term(weight: float, *, eta: float = 0.2, probes: int = 0) -> Term:
    """Term "distortion": IRVAE's relaxed distortion of `model.decode` on `mixup_codes` of the
    batch's codes (the term's key draws the mixup), exact (`relaxed_distortion`) when
    `probes` = 0, else IRVAE's own ESTIMATE with that many Gaussian probes per code
    (`jacobian.relaxed_distortion_estimate`; IRVAE uses 1). A scalar."""
    _checks.check_nonnegative("distortion_eta", eta)
    _checks.check_int("distortion_probes", probes)

    def fn(model, x, x_tilde, h, key):
        k_mix, k_probe = jax.random.split(key)
        z = mixup_codes(k_mix, h, eta=eta)
        if probes == 0:
            return relaxed_distortion(jacobian.pullback_metric(model.decode, z), weight=1.0)
        return jacobian.relaxed_distortion_estimate(model.decode, z, k_probe, num_probes=probes)

    return Term("distortion", fn, weight)


def logdet_variance_term(weight: float) -> Term:
    """Term "logdet_variance": Geometric AE's λ Var_b log det G_b (`logdet_variance`) of
    `model.decode` at the batch's codes, the log-determinants by QR. A scalar."""

    def fn(model, x, x_tilde, h, key):
        return logdet_variance(jacobian.pullback_logdet(model.decode, h), weight=1.0)

    return Term("logdet_variance", fn, weight)


def reconstruction_contractive_term(weight: float, *, probes: int = 0) -> Term:
    """Term "reconstruction_contractive": λ ‖∂r(x)/∂x‖²_F at the clean input, r = model.decode ∘
    model.encode, exact (`reconstruction_contractive`) when `probes` = 0, else a Hutchinson
    ESTIMATE with that many probes (`jacobian.reconstruction_frobenius_sq_estimate`, method
    "jvp", the term's key). Per example."""
    _checks.check_int("reconstruction_contractive_probes", probes)

    def fn(model, x, x_tilde, h, key):
        if probes == 0:
            return reconstruction_contractive(model.encode, model.decode, x, weight=1.0)
        return jacobian.reconstruction_frobenius_sq_estimate(
            model.encode, model.decode, x, key, num_probes=probes
        )

    return Term("reconstruction_contractive", fn, weight)
