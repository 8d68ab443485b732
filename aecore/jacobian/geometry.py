"""The decoder's geometry and the reconstruction Jacobian, exact: the pullback metric
G = J_gᵀJ_g, its log-determinant by a thin QR of J_g, and ‖∂g(f(x))/∂x‖²_F = tr(G(f(x)) J_f J_fᵀ).

Clearly named random-probe ESTIMATES (IRVAE's relaxed distortion, Hutchinson on the composed
map) live here too; `explain_reconstruction` says which route runs and what each costs.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import TYPE_CHECKING

import jax
import jax.numpy as jnp
import numpy as np

from aecore import _checks

if TYPE_CHECKING:  # defined in the package, which imports this module
    from aecore.jacobian import Explanation

RECONSTRUCTION_MODES = ("auto", "factored", "jacrev", "jacfwd")


# ---------------------------------------------------------------------------------------------
# Input checks: one line naming the bad value.


def _check_codes(fn_name: str, z) -> None:
    shape = getattr(z, "shape", None)
    if shape is None or len(shape) != 2:
        raise ValueError(
            f"{fn_name} needs codes z of shape [B, k] (a batch of vectors), got {shape}"
        )
    if not jnp.issubdtype(z.dtype, jnp.floating):
        raise TypeError(f"{fn_name} needs floating-point codes z, got dtype {z.dtype}")


def _out_aval(fn: Callable, x0, what: str):
    out = jax.eval_shape(fn, x0)
    if not isinstance(out, jax.ShapeDtypeStruct):
        raise TypeError(
            f"{what} must return one array for one input of shape {tuple(x0.shape)}, "
            f"got {type(out).__name__}: {jax.tree.map(lambda a: a.shape, out)}"
        )
    if not jnp.issubdtype(out.dtype, jnp.floating):
        raise TypeError(f"{what} must return a floating-point array, got dtype {out.dtype}")
    return out


def _check_decoder(fn_name: str, decode: Callable, z) -> int:
    """The decoder's flattened output size d for one code (after the checks)."""
    _check_codes(fn_name, z)
    out = _out_aval(decode, z[0], "decode")
    if out.size == 0:
        raise ValueError(
            f"decode must return a non-empty array for one code, got shape {out.shape}"
        )
    return int(out.size)


def _check_autoencoder(fn_name: str, encode: Callable, decode: Callable, x) -> int:
    """The code size k of one example (after the checks)."""
    if getattr(x, "ndim", 0) < 2:
        raise ValueError(
            f"{fn_name} needs a batch x of shape [B, *input_shape], got shape "
            f"{getattr(x, 'shape', None)}"
        )
    h = _out_aval(encode, x[0], "encode")
    if h.ndim != 1:
        raise ValueError(
            f"encode must map one example {tuple(x.shape[1:])} to a code vector [k], got shape "
            f"{h.shape}"
        )
    out = _out_aval(decode, jnp.zeros(h.shape, h.dtype), "decode")
    if out.shape != x.shape[1:]:
        raise ValueError(
            f"decode(encode(x)) must have one example's shape {tuple(x.shape[1:])}, got {out.shape}"
        )
    return h.shape[0]


# ---------------------------------------------------------------------------------------------
# The pullback metric and its log-determinant.


def _flat(fn: Callable) -> Callable:
    return lambda v: fn(v).reshape(-1)


def _decoder_jac(decode: Callable, zi: jax.Array, d: int) -> jax.Array:
    """J_g(z_i) [d, k]: k forward-mode products (d reverse ones if the output is smaller)."""
    k = zi.shape[0]
    jac = jax.jacfwd if k <= d else jax.jacrev
    return jac(_flat(decode))(zi)


def _per_example(fn: Callable, args: tuple, chunk_size: int | None) -> jax.Array:
    if chunk_size is None:
        return jax.vmap(fn)(*args)
    _checks.check_positive_int("chunk_size", chunk_size)
    return jax.lax.map(lambda a: fn(*a), args, batch_size=chunk_size)


def pullback_metric(decode: Callable, z: jax.Array, *, chunk_size: int | None = None) -> jax.Array:
    """Exact pullback metric G_i = J_g(z_i)ᵀ J_g(z_i) of a decoder at every code of a batch.

    J_g is the Jacobian of the decoder's output, flattened, with respect to the code; it is
    formed by k forward-mode products per example (k = code size, small for an autoencoder),
    then G = JᵀJ. IRVAE (Lee et al., ICLR 2022) and flat latent spaces (Chen et al. 2020)
    regularize this metric; Geometric AE (Nazari et al. 2023) its log-determinant.

    Args:
      decode: maps ONE code [k] to one output (any shape); any callable (nnx module, bound
        method, plain jnp function, Equinox module).
      z: codes [B, k].
      chunk_size: evaluate the batch in chunks of this many codes (`jax.lax.map`) so that the
        [B, d, k] Jacobians never have to fit in memory at once. None: all at once.

    Returns:
      [B, k, k] symmetric positive semi-definite matrices.
    """
    d = _check_decoder("pullback_metric", decode, z)

    def per_example(zi):
        j = _decoder_jac(decode, zi, d)
        return j.T @ j

    return _per_example(per_example, (z,), chunk_size)


def householder_r(a: jax.Array) -> jax.Array:
    """R [k, k] of a thin QR of a [d, k] (d >= k), by k Householder reflections in plain JAX.

    Backward stable like LAPACK's geqrf, without its per-matrix custom call: vmapped over a
    batch it is one loop of k batched updates, where XLA:CPU's batched QR calls LAPACK matrix
    by matrix (40x slower for 64 matrices of 784 x 32 on this shared 2-core CPU, measured).
    The diagonal may be negative (|R_jj| are what the determinant needs).
    """
    d, k = a.shape
    rows = jnp.arange(d)

    def reflect(i, a):
        col = jax.lax.dynamic_index_in_dim(a, i, axis=1, keepdims=False)
        x = jnp.where(rows >= i, col, 0.0)
        norm = jnp.sqrt(jnp.sum(x * x))
        alpha = jax.lax.dynamic_index_in_dim(x, i, keepdims=False)
        v = x + jnp.where(rows == i, jnp.where(alpha >= 0, norm, -norm), 0.0)
        vv = jnp.sum(v * v)
        beta = jnp.where(vv > 0, 2.0 / jnp.where(vv > 0, vv, 1.0), 0.0)
        return a - beta * jnp.outer(v, v @ a)

    return jnp.triu(jax.lax.fori_loop(0, k, reflect, a)[:k])


def _upper_inverse(r: jax.Array) -> jax.Array:
    """R⁻¹ of an upper-triangular [k, k] R with a nonzero diagonal, by back substitution."""
    k = r.shape[0]
    eye = jnp.eye(k, dtype=r.dtype)

    def row(j, x):  # rows below i are done, row i (and above) still zero
        i = k - 1 - j
        r_i = jax.lax.dynamic_index_in_dim(r, i, keepdims=False)
        e_i = jax.lax.dynamic_index_in_dim(eye, i, keepdims=False)
        return x.at[i].set((e_i - r_i @ x) / r_i[i])

    return jax.lax.fori_loop(0, k, row, jnp.zeros_like(r))


@jax.custom_vjp
def logdet_gram(jac: jax.Array) -> jax.Array:
    """log det(jacᵀjac) = 2 Σ log|R_ii| from a thin QR of jac [d, k] (d >= k); never forms jacᵀjac.

    Forming G = JᵀJ squares J's condition number; the QR of J does not, so the value keeps about
    cond(J) · eps relative accuracy in R's diagonal. At exact rank deficiency (some R_ii = 0)
    the value is -inf. The gradient is 2 J R⁻¹R⁻ᵀ (= 2 J G⁻¹), with each |R_ii| floored at
    eps · max_j |R_jj| (eps of the dtype) in R⁻¹, so it stays finite, also at rank
    deficiency, where it is the gradient of the floored, finite surrogate.
    """
    return _logdet_fwd(jac)[0]


def _logdet_fwd(jac):
    r = householder_r(jac)
    diag = jnp.diagonal(r)
    value = 2.0 * jnp.sum(jnp.log(jnp.abs(diag)))
    floor = jnp.finfo(jac.dtype).eps * jnp.max(jnp.abs(diag))
    floor = jnp.where(floor > 0, floor, jnp.finfo(jac.dtype).tiny)
    clamped = jnp.where(diag < 0, -1.0, 1.0) * jnp.maximum(jnp.abs(diag), floor)
    r = r - jnp.diag(diag) + jnp.diag(clamped)
    return value, (jac, r)


def _logdet_bwd(res, ct):
    jac, r = res
    r_inv = _upper_inverse(r)
    return (2.0 * ct * (jac @ r_inv) @ r_inv.T,)


logdet_gram.defvjp(_logdet_fwd, _logdet_bwd)


def pullback_logdet(decode: Callable, z: jax.Array, *, chunk_size: int | None = None) -> jax.Array:
    """log det G_i of the pullback metric, stably: 2 Σ log|diag R| of a thin QR of J_g(z_i).

    Never `slogdet(JᵀJ)`: forming G squares J's condition number (Geometric AE's `logdet` of G
    needed hand rescaling to keep det G finite). The value is exact up to round-off; at exact
    rank deficiency (a zero column of R) it is -inf. Its gradient (reverse mode) stays finite
    near and at singular G: |R_ii| is floored at eps · max_j |R_jj| in the gradient only
    (`logdet_gram`), so near singular G it is the exact gradient until that floor, then the
    gradient of the floored surrogate. Forward-mode differentiation of the log-det is not
    supported (it is a `jax.custom_vjp`).

    Args:
      decode: maps ONE code [k] to one output with d >= k entries (else G is singular).
      z: codes [B, k].
      chunk_size: as in `pullback_metric`.

    Returns:
      [B] log-determinants.
    """
    d = _check_decoder("pullback_logdet", decode, z)
    if d < z.shape[1]:
        raise ValueError(
            f"pullback_logdet needs a decoder output of at least k = {z.shape[1]} entries "
            f"(else G is singular), got {d}"
        )
    return _per_example(lambda zi: logdet_gram(_decoder_jac(decode, zi, d)), (z,), chunk_size)


# ---------------------------------------------------------------------------------------------
# J_f J_fᵀ [B, k, k] from the encoder's rows, by the contractive penalty's routes.


def _engine_module():
    from aecore import jacobian  # noqa: PLC0415 - aecore.jacobian imports this module

    return jacobian


def _pair_gram(m: jax.Array, g: jax.Array | None) -> jax.Array:
    """m_b g m_bᵀ [B, k, k] for rows m [B, k, n] (m_b m_bᵀ if g is None)."""
    if g is None:
        return jnp.einsum("bkn,bln->bkl", m, m)
    p = jnp.einsum("bkn,nm->bkm", m, g.astype(m.dtype))
    return jnp.einsum("bkm,blm->bkl", p, m)


def _chain_rows_gram(engine, route: str, x: jax.Array) -> jax.Array:
    """Rows M = J(x) A_0⁻ (the code side of a chain) for every example, then M G_0 Mᵀ with
    G_0 = A_0A_0ᵀ once per batch, or (M A_0)(M A_0)ᵀ (the direct product)."""
    from aecore.jacobian import routes, trace  # noqa: PLC0415

    chain, program = engine.chain, engine.program
    ctx = routes.Context(chain, trace.const_env(program), program.avals)
    first, b = chain.linear[0], x.shape[0]
    if not chain.segments:  # a linear map: J J^T = A A^T for every example
        gram = routes.gram_of(ctx, first)
        return jnp.broadcast_to(gram, (b, *gram.shape))
    mats = routes.chain_matrices(ctx)
    m = jax.vmap(lambda xi: routes.code_side(ctx, routes.diagonals(ctx, xi), mats))(x)
    last = chain.linear[-1]
    if last.isometric:  # the code side skips a permutation of the code; J J^T does not
        m = jnp.einsum("kn,bnm->bkm", routes.matrix(ctx, last).astype(m.dtype), m)
    if first.isometric:
        return _pair_gram(m, None)
    if route == "structured/direct":
        n = jax.vmap(lambda mi: routes.pull(ctx, first, mi))(m)
        return _pair_gram(n, None)
    return _pair_gram(m, routes.gram_of(ctx, first))


def _peel_rows_gram(engine, route: str, x: jax.Array) -> jax.Array:
    from aecore.jacobian import routes, trace  # noqa: PLC0415

    peel, program = engine.peel, engine.program
    ctx = routes.Context(None, trace.const_env(program), program.avals)
    g = routes.gram_of(ctx, peel.first)
    n1 = int(np.prod(peel.first.out_shape))

    def rest(a):
        return trace.run(peel.rest, ctx.env, peel.first.dst, a, dst=program.out).reshape(-1)

    jac = jax.jacfwd(rest) if route == "peel/jacfwd" else jax.jacrev(rest)
    m = jax.vmap(lambda xi: jac(trace.run(peel.first.ops, ctx.env, 0, xi)).reshape(-1, n1))(x)
    return _pair_gram(m, g)


def _blocks_rows_gram(engine, route: str, x: jax.Array) -> jax.Array:
    m_of, g = _engine_module()._blocks_rows(engine, route)
    return _pair_gram(jax.vmap(m_of)(x), g)


def encoder_row_gram(encode: Callable, x: jax.Array, *, route: str | None = None) -> jax.Array:
    """J_f(x_i) J_f(x_i)ᵀ [B, k, k] for every example, by the encoder's cheapest exact route of
    `aecore.jacobian.explain` (or the named `route`): the rows of J_f the contractive penalty
    pulls back, multiplied pairwise instead of squared and summed."""
    jacobian = _engine_module()
    engine = jacobian._Engine(encode, x)
    route = engine.best() if route is None else route
    if route in ("jacrev", "jacfwd"):
        jac = jax.jacrev if route == "jacrev" else jax.jacfwd
        m = jax.vmap(jac(_flat(encode)))(x).reshape(x.shape[0], -1, int(np.prod(x.shape[1:])))
        return _pair_gram(m, None)
    if route.startswith("peel"):
        return _peel_rows_gram(engine, route, x)
    if route.startswith("blocks"):
        return _blocks_rows_gram(engine, route, x)
    return _chain_rows_gram(engine, route, x)


# ---------------------------------------------------------------------------------------------
# The reconstruction Jacobian.


@dataclasses.dataclass(frozen=True)
class ReconstructionExplanation:
    """How ‖∂g(f(x))/∂x‖²_F is computed and what each exact route costs.

    Attributes:
      encoder: the encoder's `Explanation` (its structure and the route of its rows).
      decoder: the decoder's structure as the engine reads it.
      costs: multiply-adds per batch of each mode: "factored" (the encoder's rows, J_f J_fᵀ,
        k decoder JVPs, G and the trace), "jacrev" (d reverse passes of g∘f), "jacfwd"
        (d_in forward passes).
      choice: the mode `mode="auto"` runs.
    """

    encoder: Explanation
    decoder: str
    costs: dict[str, int]
    choice: str

    def __str__(self) -> str:
        lines = [
            "reconstruction ‖J_g J_f‖²_F = tr(G_dec(h) · J_f J_fᵀ)",
            f"encoder:   {self.encoder.structure}",
            f"  rows of J_f by {self.encoder.choice}",
            f"decoder:   {self.decoder}",
            "  G_dec by k forward-mode products (JVPs)",
        ]
        for route, macs in sorted(self.costs.items(), key=lambda kv: kv[1]):
            mark = "  <- auto" if route == self.choice else ""
            lines.append(f"  {route:<18} {macs / 1e6:>12.2f} M multiply-adds{mark}")
        return "\n".join(lines)


def _reconstruction_plan(encode, decode, x):
    """(encoder engine, decoder structure, costs per mode) on the batch x."""
    from aecore.jacobian import routes, trace  # noqa: PLC0415

    jacobian = _engine_module()
    enc = jacobian._Engine(encode, x)
    h0 = jax.eval_shape(encode, x[0])
    z = jnp.zeros((1, *h0.shape), h0.dtype)
    dec = jacobian._Engine(decode, z)
    b, k = x.shape[0], h0.shape[0]
    d_in = int(np.prod(x.shape[1:]))
    d_out = int(np.prod(jax.eval_shape(decode, z[0]).shape))
    fwd_e = routes.forward_macs(enc.program)
    fwd_d = routes.forward_macs(trace.trace(decode, z[0]))
    route = enc.best()
    n_rows = d_in if route in ("jacrev", "jacfwd") else _rows_width(enc, route)
    factored = enc.costs[route] + b * (k * k * n_rows + (1 + k) * fwd_d + d_out * k * k + k * k)
    costs = {
        "factored": factored,
        "jacrev": b * (fwd_e + fwd_d) * (1 + d_out),
        "jacfwd": b * (fwd_e + fwd_d) * (1 + d_in),
    }
    return enc, dec, costs


def _rows_width(engine, route: str) -> int:
    """The width n of the rows M [k, n] the route forms (the pairwise product's cost)."""
    if route.startswith("peel"):
        return int(np.prod(engine.peel.first.out_shape))
    if route.startswith("blocks"):
        return int(np.prod(engine.parts[0].block(engine.program.avals).out_shape))
    return int(np.prod(engine.chain.linear[0].out_shape))


def explain_reconstruction(
    encode: Callable, decode: Callable, x: jax.Array
) -> ReconstructionExplanation:
    """The routes of `reconstruction_frobenius_sq` on the batch x, their costs and the choice.

    Args:
      encode: maps ONE example [*input_shape] to its code [k].
      decode: maps ONE code [k] to one example [*input_shape].
      x: batch [B, *input_shape] (only its shape and dtype matter).

    Returns:
      A `ReconstructionExplanation`; `print` it for a readable report.
    """
    _check_autoencoder("explain_reconstruction", encode, decode, x)
    enc, dec, costs = _reconstruction_plan(encode, decode, x)
    jacobian = _engine_module()
    enc_expl = jacobian.Explanation(
        enc.describe(), dict(enc.costs), enc.best(), enc.reason, {}, enc.describe_blocks()
    )
    choice = min(costs, key=costs.get)
    return ReconstructionExplanation(enc_expl, dec.describe(), costs, choice)


def _factored(encode, decode, x, route: str | None) -> jax.Array:
    h = jax.vmap(encode)(x)  # [B, k]
    g_dec = pullback_metric(decode, h)  # [B, k, k]
    jjt = encoder_row_gram(encode, x, route=route)  # [B, k, k]
    # tr(G · J Jᵀ) of two symmetric matrices: the sum of their elementwise product.
    return jnp.einsum("bkl,bkl->b", g_dec, jjt.astype(g_dec.dtype))


def reconstruction_frobenius_sq(
    encode: Callable, decode: Callable, x: jax.Array, *, mode: str = "auto"
) -> jax.Array:
    """Exact ‖∂r(x_i)/∂x_i‖²_F of the reconstruction r = decode ∘ encode, for every example.

    The reconstruction contractive penalty of Alain & Bengio (2014). Its Jacobian factors:
    ‖J_g J_f‖²_F = tr(G_dec(h) · J_f J_fᵀ) with h = f(x): two k × k matrices, the decoder's
    pullback metric (k JVPs, `pullback_metric`) and the Gram matrix of the encoder's rows,
    which the engine pulls back as for the contractive penalty (`aecore.jacobian.explain`),
    against d reverse passes of g∘f by plain autodiff.

    Args:
      encode: maps ONE example [*input_shape] to its code [k].
      decode: maps ONE code [k] to one example [*input_shape].
      x: batch [B, *input_shape].
      mode: "auto" (the cheaper of "factored" and autodiff by multiply-adds, see
        `explain_reconstruction`), "factored" (the identity above), "jacrev" or "jacfwd"
        (autodiff of the composition).

    Returns:
      [B] squared Frobenius norms (exact up to floating-point round-off).
    """
    _checks.check_choice("mode", mode, RECONSTRUCTION_MODES)
    _check_autoencoder("reconstruction_frobenius_sq", encode, decode, x)
    if mode == "auto":
        mode = min((costs := _reconstruction_plan(encode, decode, x)[2]), key=costs.get)
    if mode == "factored":
        return _factored(encode, decode, x, None)
    composed = _flat(lambda xi: decode(encode(xi)))
    jac = jax.jacfwd(composed) if mode == "jacfwd" else jax.jacrev(composed)
    return jax.vmap(lambda xi: jnp.sum(jac(xi) ** 2))(x)


# ---------------------------------------------------------------------------------------------
# Estimates (clearly named): not exact.


def reconstruction_frobenius_sq_estimate(
    encode: Callable,
    decode: Callable,
    x: jax.Array,
    key: jax.Array,
    *,
    num_probes: int,
    method: str = "jvp",
    with_error: bool = False,
) -> jax.Array | tuple[jax.Array, jax.Array]:
    """ESTIMATE of ‖∂r(x_i)/∂x_i‖²_F: `frobenius_sq_estimate` on the composed map g∘f.

    Unbiased, not exact. For an interval that covers at its nominal level, pass the composed
    map `lambda xi: decode(encode(xi)).reshape(-1)` to `aecore.jacobian.frobenius_sq_interval`
    with the same key and probes.

    Args:
      encode: the encoder, as in `reconstruction_frobenius_sq`.
      decode: the decoder, as in `reconstruction_frobenius_sq`.
      x: [B, *input_shape] inputs.
      key: PRNG key for the probes.
      num_probes: probes per example, as in `aecore.jacobian.frobenius_sq_estimate`.
      method: the estimator, as in `aecore.jacobian.frobenius_sq_estimate`.
      with_error: also return standard errors, as in `aecore.jacobian.frobenius_sq_estimate`.

    Returns:
      [B] estimates, or (estimates, standard errors) with `with_error=True`.
    """
    _check_autoencoder("reconstruction_frobenius_sq_estimate", encode, decode, x)
    jacobian = _engine_module()
    return jacobian.frobenius_sq_estimate(
        _flat(lambda xi: decode(encode(xi))),
        x,
        key,
        num_probes=num_probes,
        method=method,
        with_error=with_error,
    )


def relaxed_distortion_estimate(
    decode: Callable, z: jax.Array, key: jax.Array, *, num_probes: int = 1
) -> jax.Array:
    """ESTIMATE of the relaxed distortion E[tr G²] / E[tr G]² at the codes z, IRVAE's way.

    Lee et al. (ICLR 2022), `relaxed_distortion_measure`: per code, Gaussian probes v ~ N(0, I_k)
    give tr G ≈ ‖J v‖² (one JVP) and tr G² ≈ ‖JᵀJ v‖² (one VJP of J v), each unbiased; the
    result is the ratio of their batch means (a ratio estimate: biased, consistent). With
    `num_probes` > 1 each code's two values are averaged over its probes. The codes are used as
    given: IRVAE's mixup of codes is the caller's (`aecore.regularizers`).

    Args:
      decode: maps ONE code [k] to one output.
      z: codes [B, k].
      key: PRNG key for the probes.
      num_probes: probes per code (IRVAE: 1).

    Returns:
      A scalar.
    """
    _check_decoder("relaxed_distortion_estimate", decode, z)
    _checks.check_positive_int("num_probes", num_probes)
    v = jax.random.normal(key, (z.shape[0], num_probes, z.shape[1]), z.dtype)
    flat = _flat(decode)

    def per_code(zi, vi):
        out, pullback = jax.vjp(flat, zi)

        def one(u):
            jv = jax.jvp(flat, (zi,), (u,))[1]
            return jnp.sum(jv**2), jnp.sum(pullback(jv)[0] ** 2)

        tr_g, tr_g2 = jax.vmap(one)(vi)
        return jnp.mean(tr_g), jnp.mean(tr_g2)

    tr_g, tr_g2 = jax.vmap(per_code)(z, v)
    return jnp.mean(tr_g2) / jnp.mean(tr_g) ** 2


def relaxed_distortion(g: jax.Array) -> jax.Array:
    """Exact relaxed distortion E[tr G²] / E[tr G]² of a batch of pullback metrics g [B, k, k].

    IRVAE's measure (Lee et al., ICLR 2022), with the batch means taken exactly instead of by
    one probe per code; its minimum 1/k holds where every G_i is the same multiple of I.
    Returns a scalar.
    """
    if getattr(g, "ndim", 0) != 3 or g.shape[1] != g.shape[2]:
        raise ValueError(f"relaxed_distortion needs metrics g of shape [B, k, k], got {g.shape}")
    tr_g = jnp.trace(g, axis1=1, axis2=2)
    tr_g2 = jnp.sum(g * g, axis=(1, 2))  # tr(G²) = ‖G‖²_F for symmetric G
    return jnp.mean(tr_g2) / jnp.mean(tr_g) ** 2
