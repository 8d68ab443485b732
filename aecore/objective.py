"""One training objective for every autoencoder variant: a reconstruction loss plus a list of
weighted terms (`regularizers.Term`, built-in or user-written) and an input corruption.

Nothing else in aecore knows the list of terms: `Objective.terms()` builds it from the keyword
fields (the built-in regularizers) plus `extra_terms`; `objective_terms` adds, logs and checks
them all the same way.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from aecore import _checks, jacobian, losses, models, regularizers
from aecore.regularizers import HIGHER_ORDER_FORMS, Term


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
        probes draw from the term's own key; `jacobian_mode` and `chunk_size` do not apply.
      contractive_estimator: the estimate's method when `contractive_probes` > 0: "jvp"
        (Hutchinson, default), "vjp", "hutch++" or "xtrace" (`jacobian.ESTIMATOR_METHODS`);
        where it has a standard error the batch's estimated relative error is logged as
        `contractive_rel_error` beside the term (not added to the loss).
      jacobian_mode: route of the contractive terms (see `aecore.jacobian.MODES`).
      chunk_size: evaluate the Jacobians of the contractive and higher-order terms in chunks
        of this many examples (memory bound; same values).
      higher_order: γ of CAE+H's γ E‖J(x) − J(x+ε)‖²_F, with ε ~ N(0, higher_order_sigma²)
        and `higher_order_samples` Monte-Carlo draws.
      higher_order_mode: how that expectation is computed: "monte_carlo" (the draws above),
        "expected" (exactly, no noise; one elementwise layer only) or "hessian" (its σ → 0
        limit σ²‖∂J/∂x‖²_F, exact for any encoder); see `regularizers.contractive_higher_order`.
      isometry: λ of the flatness penalty λ ‖G − c I‖²_F on the decoder's exact pullback metric
        G = J_gᵀJ_g at the batch's codes (Chen et al. 2020; `regularizers.isometry`).
      isometry_scale: its c >= 0 fixed, or None (default) for the scale-free c = tr G / k.
      distortion: λ of IRVAE's relaxed distortion E[tr G²]/E[tr G]² (Lee et al., ICLR 2022) on
        mixup-interpolated codes (`regularizers.distortion_term`), a batch-level scalar.
      distortion_eta: the mixup's η: t ~ U[−η, 1 + η] (IRVAE: 0.2).
      distortion_probes: 0 (default) computes the distortion exactly (k JVPs per code); > 0
        uses IRVAE's ESTIMATE with that many Gaussian probes per code (IRVAE: 1).
      logdet_variance: λ of Geometric AE's λ Var_b log det G_b (Nazari et al. 2023), log-dets
        from a QR of J_g (`jacobian.pullback_logdet`).
      reconstruction_contractive: λ of the reconstruction contractive penalty λ ‖∂r(x)/∂x‖²_F,
        r = decode ∘ encode, at the clean input (Alain & Bengio 2014), exact through
        tr(G_dec J_f J_fᵀ) (`jacobian.reconstruction_frobenius_sq`, mode "auto").
      reconstruction_contractive_probes: 0 (default) exact; > 0 a Hutchinson ESTIMATE with
        that many probes per example (`jacobian.reconstruction_frobenius_sq_estimate`).
      corruption: "none", "mask" (drop probability `corruption_level`) or "gaussian"
        (std `corruption_level`); the reconstruction target stays the clean input.
      extra_terms: user terms (`regularizers.Term(name, fn, weight)`), added after the built-in
        ones; e.g. a contractive penalty on a hidden layer is
        `regularizers.contractive_term(0.1, layer=lambda m, x: m.encoder.hidden(x), name="cae1")`.

    Keys: from a step's key, the corruption takes `split(key)[0]`, the model's own RNG streams
    (Dropout) `fold_in(key, 0)` via `models.apply_batch`, and the term at position i of
    `terms()` `fold_in(split(key)[1], i)`: by position, never by name.

    Examples:
      >>> import aecore
      >>> objective = aecore.Objective(loss="cross_entropy", contractive=0.1, weight_decay=1e-4)
      >>> [term.name for term in objective.terms()]
      ['weight_decay', 'contractive']
    """

    loss: str = "squared_error"
    weight_decay: float = 0.0
    l1: float = 0.0
    kl: float = 0.0
    rho: float = 0.05
    contractive: float = 0.0
    contractive_probes: int = 0
    contractive_estimator: str = "jvp"
    jacobian_mode: str = "auto"
    chunk_size: int | None = None
    higher_order: float = 0.0
    higher_order_sigma: float = 0.1
    higher_order_samples: int = 4
    higher_order_mode: str = "monte_carlo"
    corruption: str = "none"
    corruption_level: float = 0.0
    extra_terms: Sequence[Term] = ()
    isometry: float = 0.0
    isometry_scale: float | None = None
    distortion: float = 0.0
    distortion_eta: float = 0.2
    distortion_probes: int = 0
    logdet_variance: float = 0.0
    reconstruction_contractive: float = 0.0
    reconstruction_contractive_probes: int = 0

    def __post_init__(self):
        object.__setattr__(self, "extra_terms", tuple(self.extra_terms))
        for t in self.extra_terms:
            if not isinstance(t, Term):
                raise TypeError(
                    f"extra_terms must hold regularizers.Term(name, fn, weight), got {t!r}"
                )
        _checks.check_choice("loss", self.loss, losses.LOSSES)
        for name in (
            *("weight_decay", "l1", "kl", "contractive", "higher_order", "isometry"),
            *("distortion", "distortion_eta", "logdet_variance", "reconstruction_contractive"),
        ):
            _checks.check_nonnegative(name, getattr(self, name))
        if self.isometry_scale is not None:
            _checks.check_nonnegative("isometry_scale", self.isometry_scale)
        for name in (
            "contractive_probes",
            "distortion_probes",
            "reconstruction_contractive_probes",
        ):
            _checks.check_int(name, getattr(self, name))
        _checks.check_open_unit("rho", self.rho)
        _checks.check_choice("jacobian_mode", self.jacobian_mode, jacobian.MODES)
        if self.chunk_size is not None:
            _checks.check_positive_int("chunk_size", self.chunk_size)
        _checks.check_nonnegative("higher_order_sigma", self.higher_order_sigma)
        _checks.check_positive_int("higher_order_samples", self.higher_order_samples)
        _checks.check_choice("higher_order_mode", self.higher_order_mode, HIGHER_ORDER_FORMS)
        _checks.check_choice(
            "contractive_estimator", self.contractive_estimator, jacobian.ESTIMATOR_METHODS
        )
        _checks.check_choice("corruption", self.corruption, regularizers.CORRUPTIONS)
        if self.corruption == "mask":
            _checks.check_half_open_unit("corruption_level (mask q)", self.corruption_level)
        else:
            _checks.check_nonnegative("corruption_level", self.corruption_level)
        names = [t.name for t in self._builtin_terms()] + [t.name for t in self.extra_terms]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"objective term names must be unique, got {dup} more than once")

    def terms(self) -> list[Term]:
        """The built-in terms switched on by the fields (weight > 0), then `extra_terms`."""
        return self._builtin_terms() + [t for t in self.extra_terms if t.weight != 0]

    def _builtin_terms(self) -> list[Term]:
        built = []
        if self.weight_decay > 0:
            built.append(regularizers.weight_decay_term(self.weight_decay))
        if self.l1 > 0:
            built.append(regularizers.l1_term(self.l1))
        if self.kl > 0:
            built.append(regularizers.kl_term(self.kl, rho=self.rho))
        if self.contractive > 0:
            built.append(
                regularizers.contractive_term(
                    self.contractive,
                    mode=self.jacobian_mode,
                    chunk_size=self.chunk_size,
                    probes=self.contractive_probes,
                    estimator=self.contractive_estimator,
                )
            )
        if self.higher_order > 0:
            built.append(
                regularizers.higher_order_term(
                    self.higher_order,
                    sigma=self.higher_order_sigma,
                    num_corruptions=self.higher_order_samples,
                    mode=self.jacobian_mode,
                    chunk_size=self.chunk_size,
                    form=self.higher_order_mode,
                )
            )
        built += self._geometry_terms()
        return built

    def _geometry_terms(self) -> list[Term]:
        """The decoder-geometry and reconstruction-Jacobian terms switched on by the fields."""
        built = []
        if self.isometry > 0:
            built.append(
                regularizers.isometry_term(
                    self.isometry, scale=self.isometry_scale, chunk_size=self.chunk_size
                )
            )
        if self.distortion > 0:
            built.append(
                regularizers.distortion_term(
                    self.distortion, eta=self.distortion_eta, probes=self.distortion_probes
                )
            )
        if self.logdet_variance > 0:
            built.append(regularizers.logdet_variance_term(self.logdet_variance))
        if self.reconstruction_contractive > 0:
            built.append(
                regularizers.reconstruction_contractive_term(
                    self.reconstruction_contractive,
                    probes=self.reconstruction_contractive_probes,
                )
            )
        return built

    def describe(self) -> dict:
        """A JSON-serialisable record (user terms by name and weight; their code is not stored)."""
        record = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        record["extra_terms"] = [{"name": t.name, "weight": t.weight} for t in self.extra_terms]
        return record


def reconstruction(model: models.Model, x: jax.Array, h: jax.Array, *, loss: str) -> jax.Array:
    """Per-example reconstruction loss [B] of the clean target x from codes h [B, d_z].

    Decodes with the model as it is (pass `models.eval_mode(model)` for evaluation).
    """
    out, _ = models.apply_batch(lambda m, c: _decoder_output(m, c, loss), model, h)
    return _loss_from_output(out, x, loss)


def _decoder_output(model, h, loss: str):
    """What the loss reads from one code: logits for cross-entropy or a linear output."""
    if loss == "cross_entropy" or model.output == "identity":
        return model.decode_logits(h)
    return model.decode(h)


def _loss_from_output(out, x, loss: str):
    if loss == "cross_entropy":
        return losses.sigmoid_cross_entropy(out, x)
    return losses.squared_error(out, x)


def objective_with_state(
    model: models.Model, x: jax.Array, key: jax.Array, objective: Objective
) -> tuple[jax.Array, dict[str, jax.Array], nnx.State]:
    """`objective_terms` plus the non-parameter state the training-mode forward pass wrote.

    Returns:
      (total, terms, updates): `updates` is an `nnx.State` (batch statistics; empty for models
      without such state) to merge into the carried state.
    """
    if not isinstance(objective, Objective):
        raise TypeError(f"objective must be an aecore.Objective, got {type(objective).__name__}")
    models.check_protocol(model, x.shape[1:], x.dtype)  # trace time only: shapes are static
    k_corrupt, k_terms = jax.random.split(key)
    x_tilde = regularizers.corrupt(
        k_corrupt, x, kind=objective.corruption, level=objective.corruption_level
    )

    def forward(m, xi):  # one pass, so state written by encoder and decoder is kept together
        h = m.encode(xi)
        return h, _decoder_output(m, h, objective.loss)

    (h, out), updates = models.apply_batch(forward, model, x_tilde, key=jax.random.fold_in(key, 0))
    terms = {"reconstruction": jnp.mean(_loss_from_output(out, x, objective.loss))}
    deterministic = models.eval_mode(model)
    logged = {}  # logged beside the terms, not part of the loss
    for i, term in enumerate(objective.terms()):
        k = jax.random.fold_in(k_terms, i)
        terms[term.name], logs = term.with_logs(deterministic, x, x_tilde, h, k)
        logged.update(logs)
    return jnp.asarray(sum(terms.values())), terms | logged, updates


def objective_terms(
    model: models.Model, x: jax.Array, key: jax.Array, objective: Objective
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Total loss (scalar, batch mean) and each of its terms, for a batch x [B, *input_shape].

    Per-example terms are averaged over the batch; scalar terms (weight decay, KL) are added
    once. The reconstruction sees the model in its own mode (training: Dropout active, with
    keys derived from `key`); every term sees `models.eval_mode(model)`.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> import aecore
      >>> model = aecore.make_autoencoder((8,), hidden=(4,), key=0)
      >>> x = jax.random.uniform(jax.random.key(1), (16, 8))
      >>> objective = aecore.Objective(loss="cross_entropy", contractive=0.1)
      >>> total, terms = aecore.objective_terms(model, x, jax.random.key(2), objective)
      >>> sorted(terms), total.shape
      (['contractive', 'reconstruction'], ())
      >>> bool(jnp.isclose(total, terms["reconstruction"] + terms["contractive"]))
      True
    """
    total, terms, _ = objective_with_state(model, x, key, objective)
    return total, terms
