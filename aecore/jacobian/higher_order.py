"""CAE+H's second-order term without Monte-Carlo noise: its Gaussian expectation (one layer) and
its σ → 0 limit ‖∂J/∂x‖²_F (any chain exactly, anything else by autodiff), with their costs.

E_ε‖J(x) − J(x + ε)‖²_F = σ²‖∂J/∂x‖²_F + O(σ⁴) for ε ~ N(0, σ²I) (Rifai et al. 2011b).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from aecore import _checks
from aecore.jacobian import rules, trace

HESSIAN_MODES = ("auto", "closed_form", "chain", "autodiff")
# E_z f(z), z ~ N(0, 1), by the trapezoid rule on [-10, 10] (Gaussian tail beyond: < 1e-22).
# 128 nodes, checked against scipy.integrate.quad (tests/test_higher_order.py): for sigmoid,
# softplus and tanh slopes the error of E_z[(g'(a) − g'(a + s z))²] is ≤ 1e-15 for a unit
# scale s = σ‖w_j‖ ≤ 1 and ≤ 3e-5 at s = 4 (tanh, the worst). Gauss–Hermite was measured too
# and is less accurate per node here: 128 nodes reach 4e-3 for tanh at s = 4 (64 nodes: 2e-2),
# because the poles of g' near the real axis limit it as much as they limit the trapezoid rule,
# which also spends no nodes far out in the tails. Kinked slopes (relu) converge slowly.
NUM_NODES = 128
NODE_RANGE = 10.0


def _nodes(dtype) -> tuple[jax.Array, jax.Array]:
    z = np.linspace(-NODE_RANGE, NODE_RANGE, NUM_NODES)
    w = np.exp(-(z**2) / 2)
    return jnp.asarray(z, dtype), jnp.asarray(w / w.sum(), dtype)


@dataclasses.dataclass
class Layers:
    """`fn` read as h = P · g_L(W_L ⋯ g_1(A_0 x + b_1) ⋯) with P dense or a reshape.

    Built by `read_layers`, the one place that depends on `aecore.jacobian.trace`.
    Attributes:
      describe: the structure, for messages.
      pre: one example -> the pre-activations a_l of every elementwise layer, each flattened.
      slope, curvature: (l, a_l) -> g_l'(a_l), g_l''(a_l), flattened.
      row_norms: [n_1] squared row norms of A_0 (dense or convolution), or None.
      first: A_0 as a dense [n_1, d] matrix, or None (convolution, other linear maps).
      inner: W_2 … W_L, dense [n_l, n_{l-1}] (None where a map is not one dense matrix).
      out: P as a dense [k, n_L] matrix, or None when P only reorders entries.
      out_dense: P is one dense matrix or a reshape (needed by the chain formula).
      forward_macs: multiply-adds of one forward pass.
    """

    describe: str
    pre: Callable
    slope: Callable
    curvature: Callable
    row_norms: jax.Array | None
    first: jax.Array | None
    inner: list
    out: jax.Array | None
    out_dense: bool
    forward_macs: int

    @property
    def depth(self) -> int:
        return len(self.inner) + 1

    def one_layer(self) -> bool:
        return not self.inner and self.out is None and self.out_dense

    def dense_chain(self) -> bool:
        return self.first is not None and all(w is not None for w in self.inner) and self.out_dense


def read_layers(fn: Callable, x0: jax.Array) -> Layers | str:
    """`fn` at one example as dense/convolution maps and elementwise layers, or why it is not."""
    try:
        program = trace.trace(fn, x0)
        chain = trace.analyse(program)
    except trace.NotAChain as e:
        return f"not a chain of affine maps and elementwise functions ({e})"
    if not chain.segments:
        return "a linear map (its Jacobian is constant)"
    env = trace.const_env(program)
    lin, segs = chain.linear, chain.segments
    last = lin[-1]
    out = None if last.isometric else trace.dense_matrix(last, env)

    def seg_fn(l):
        return lambda v: trace.run(segs[l].ops, env, segs[l].src, v)

    def pre(xi):
        val, pres = xi, []
        for l, block in enumerate(lin[:-1]):
            a = trace.run(block.ops, env, block.src, val)
            pres.append(a.reshape(-1))
            val = seg_fn(l)(a)
        return pres

    def slope(l, a):
        shape = segs[l].in_shape
        return jax.jvp(seg_fn(l), (a.reshape(shape),), (jnp.ones(shape, a.dtype),))[1].reshape(-1)

    first = lin[0]
    rn = None
    if trace.row_norms_propagate(first, program.avals):
        rn = trace.row_norms_sq(first, env, first.in_shape, x0.dtype)
    w1 = trace.dense_matrix(first, env)
    if rn is None and w1 is not None:
        rn = jnp.sum(w1**2, axis=1)
    macs = sum(rules.macs(op) for b in [*lin, *segs] for op in b.ops)
    return Layers(
        describe=chain.describe(),
        pre=pre,
        slope=slope,
        curvature=lambda l, a: jax.jvp(lambda v: slope(l, v), (a,), (jnp.ones_like(a),))[1],
        row_norms=None if rn is None else rn.reshape(-1),
        first=w1,
        inner=[trace.dense_matrix(b, env) for b in lin[1:-1]],
        out=out,
        out_dense=last.isometric or out is not None,
        forward_macs=max(int(macs), 1),
    )


def _per_example(f: Callable, x: jax.Array, chunk_size: int | None) -> jax.Array:
    if chunk_size is None:
        return jax.vmap(f)(x)
    _checks.check_positive_int("chunk_size", chunk_size)
    return jax.lax.map(f, x, batch_size=chunk_size)


def _check(fn_name: str, x) -> None:
    if getattr(x, "ndim", 0) < 2:
        raise ValueError(
            f"{fn_name} needs a batch x of shape [B, *input_shape], got shape "
            f"{getattr(x, 'shape', None)}"
        )


# ---------------------------------------------------------------------------------------------
# CAE+H's term at one corrupted copy (its Monte-Carlo form averages this over draws)


def frobenius_sq_diff(
    fn: Callable,
    x: jax.Array,
    x_other: jax.Array,
    *,
    mode: str = "auto",
    chunk_size: int | None = None,
) -> jax.Array:
    """Exact ‖J(x_i) − J(x'_i)‖²_F per example, J the Jacobian of `fn` (CAE+H's second term).

    For a chain J(x) − J(x') = (M_x − M_x') A_0 with M the code-side product, so the closed
    form (one layer: (g'(a) − g'(a'))² · row norms²) or the Gram/direct step applies; other
    functions form both Jacobians by jacfwd or jacrev. Modes and chunk_size as `frobenius_sq`.
    """
    from aecore import jacobian  # the exact routes of the package (imported after this module)

    _checks.check_choice("mode", mode, jacobian.MODES)
    _check("frobenius_sq_diff", x)
    if x.shape != x_other.shape:
        raise ValueError(f"x and x_other must have one shape, got {x.shape} and {x_other.shape}")
    return jacobian._penalty(fn, (x, x_other), mode, chunk_size)


# ---------------------------------------------------------------------------------------------
# The Gaussian expectation of CAE+H's term (one elementwise layer)


def frobenius_sq_diff_expected(
    fn: Callable, x: jax.Array, *, sigma: float, chunk_size: int | None = None
) -> jax.Array:
    """E_ε ‖J(x_i) − J(x_i + ε)‖²_F per example, ε ~ N(0, σ²I), with no Monte-Carlo noise.

    For one elementwise layer h = g(A x + b) (A dense or a convolution, read from the
    computation, optionally followed by a reshape) it is
    Σ_j ‖a_j‖² E_z[(g'(u_j) − g'(u_j + σ‖a_j‖ z))²], u = A x + b, a 1-D Gaussian integral per
    unit (trapezoid rule, `NUM_NODES` nodes; accuracy stated beside that constant).

    Args:
      fn: maps ONE example to its code.
      x: batch [B, *input_shape].
      sigma: σ >= 0 of the Gaussian corruption.
      chunk_size: evaluate this many examples at a time (memory bound; same values).

    Returns:
      [B] expectations.

    Raises:
      ValueError: `fn` is not one elementwise layer; use `hessian_frobenius_sq` (σ → 0 limit,
        any encoder) or `aecore.regularizers.contractive_higher_order` (Monte-Carlo).
    """
    _checks.check_nonnegative("sigma", sigma)
    _check("frobenius_sq_diff_expected", x)
    layers = read_layers(fn, x[0])
    if isinstance(layers, str) or not layers.one_layer() or layers.row_norms is None:
        why = layers if isinstance(layers, str) else f"`{layers.describe}`"
        raise ValueError(
            f"frobenius_sq_diff_expected needs one elementwise layer h = g(Ax + b), got {why}; "
            "use hessian_frobenius_sq (its σ → 0 limit) or the Monte-Carlo "
            "regularizers.contractive_higher_order"
        )
    rn = layers.row_norms
    z, w = _nodes(rn.dtype)
    scale = sigma * jnp.sqrt(rn)  # [n_1]

    def one(xi):
        (a,) = layers.pre(xi)
        g0 = layers.slope(0, a)
        shifted = jax.vmap(lambda zq: layers.slope(0, a + scale * zq))(z)  # [nodes, n_1]
        return w @ ((shifted - g0[None, :]) ** 2) @ rn

    return _per_example(one, x, chunk_size)


# ---------------------------------------------------------------------------------------------
# The σ → 0 limit: ‖∂J/∂x‖²_F = Σ_i ‖∇²h_i‖²_F


def _chain_hessian(layers: Layers, gram: jax.Array, xi: jax.Array) -> jax.Array:
    """Σ_i ‖H_i‖²_F for one example of a dense chain.

    H_i = Σ_l M_lᵀ diag(c_{i,l}) M_l with M_l = ∂a_l/∂x and c_{i,l} = ∂h_i/∂s_l ∘ g_l''(a_l), so
    ‖H_i‖² = Σ_{l,m} c_{i,l}ᵀ (P_lm ∘ P_lm) c_{i,m} with P_lm = M_l M_mᵀ = N_l G N_mᵀ, where
    N_l = ∂a_l/∂a_1 and G = A_0 A_0ᵀ: everything lives in the hidden spaces (never d×d).
    """
    pres = layers.pre(xi)
    slopes = [layers.slope(l, a) for l, a in enumerate(pres)]
    curv = [layers.curvature(l, a) for l, a in enumerate(pres)]
    ng = [gram]  # N_l G
    n: list[jax.Array | None] = [None]  # N_l (N_1 = I, never formed)
    for l, w in enumerate(layers.inner, start=1):
        prev = n[-1]
        n_l = w * slopes[l - 1][None, :] if prev is None else w @ (slopes[l - 1][:, None] * prev)
        n.append(n_l)
        ng.append(n_l @ gram)
    last = layers.out if layers.out is not None else jnp.eye(pres[-1].shape[0], dtype=xi.dtype)
    u = [last]  # ∂h/∂s_l, built from the code side
    for l in range(layers.depth - 1, 0, -1):
        u.insert(0, (u[0] * slopes[l][None, :]) @ layers.inner[l - 1])
    c = [ul * cl[None, :] for ul, cl in zip(u, curv, strict=True)]  # [k, n_l]
    total = jnp.zeros((), xi.dtype)
    for l in range(layers.depth):
        for m in range(l, layers.depth):
            n_m = n[m]
            p = ng[l] if n_m is None else ng[l] @ n_m.T  # [n_l, n_m]
            term = jnp.sum((c[l] @ p**2) * c[m])
            total = total + (term if m == l else 2 * term)
    return total


def hessian_route(fn: Callable, x: jax.Array, mode: str = "auto") -> tuple[str, Layers | str]:
    """The route `hessian_frobenius_sq` takes for `mode`, and what was read from `fn`."""
    _checks.check_choice("mode", mode, HESSIAN_MODES)
    layers = read_layers(fn, x[0])
    fits = {
        "closed_form": not isinstance(layers, str)
        and layers.one_layer()
        and layers.row_norms is not None,
        "chain": not isinstance(layers, str) and layers.dense_chain(),
    }
    if mode == "auto":
        mode = "closed_form" if fits["closed_form"] else "chain" if fits["chain"] else "autodiff"
    if mode != "autodiff" and not fits[mode]:
        why = layers if isinstance(layers, str) else f"`{layers.describe}`"
        need = {"closed_form": "one elementwise layer", "chain": "a chain of dense layers"}
        raise ValueError(
            f"hessian mode {mode!r} needs {need[mode]}, got {why}; use mode='auto' or 'autodiff'"
        )
    return mode, layers


def hessian_frobenius_sq(
    fn: Callable, x: jax.Array, *, mode: str = "auto", chunk_size: int | None = None
) -> jax.Array:
    """Exact ‖∂J/∂x‖²_F = Σ_i ‖∇²_x h_i(x)‖²_F per example: CAE+H's term in the limit σ → 0.

    E_ε‖J(x) − J(x + ε)‖²_F = σ²‖∂J/∂x‖²_F + O(σ⁴), so σ² times this replaces the Monte-Carlo
    average when the corruption is small.

    Args:
      fn: maps ONE example to its code.
      x: batch [B, *input_shape].
      mode: "auto" (the first that applies of the next three), "closed_form" (one elementwise
        layer: Σ_j g''(a_j)² ‖a_j‖⁴), "chain" (dense layers: the P_lm formula of
        `_chain_hessian`, built from A_0 A_0ᵀ in the hidden spaces), "autodiff" (the Hessian of
        each example by jacfwd∘jacrev, k·d² numbers per example: use `chunk_size`).
      chunk_size: evaluate this many examples at a time (memory bound; same values).

    Returns:
      [B] squared norms (exact up to round-off).
    """
    _check("hessian_frobenius_sq", x)
    route, layers = hessian_route(fn, x, mode)
    if route == "closed_form":
        assert isinstance(layers, Layers) and layers.row_norms is not None  # hessian_route
        rn2 = layers.row_norms**2

        def one(xi):
            (a,) = layers.pre(xi)
            return layers.curvature(0, a) ** 2 @ rn2

    elif route == "chain":
        assert isinstance(layers, Layers) and layers.first is not None  # hessian_route
        gram = layers.first @ layers.first.T  # [n_1, n_1], once per batch

        def one(xi):
            return _chain_hessian(layers, gram, xi)

    else:

        def one(xi):
            return jnp.sum(jax.jacfwd(jax.jacrev(fn))(xi) ** 2)

    return _per_example(one, x, chunk_size)


@dataclasses.dataclass(frozen=True)
class HigherOrderCosts:
    """Multiply-adds per batch of each way to compute CAE+H's term for `fn` on a batch.

    Attributes:
      structure: what was read from `fn` (or why it is not a chain).
      costs: route -> multiply-adds per batch ("expected", "hessian/…", "monte_carlo/S" for
        S corrupted copies, each costing two exact Jacobian penalties).
      choice: the route `hessian_frobenius_sq(mode="auto")` runs.
    """

    structure: str
    costs: dict[str, int]
    choice: str

    def __str__(self) -> str:
        lines = [f"structure: {self.structure}"]
        for route, macs in sorted(self.costs.items(), key=lambda kv: kv[1]):
            mark = "  <- hessian auto" if route == f"hessian/{self.choice}" else ""
            lines.append(f"  {route:<22} {macs / 1e6:>12.2f} M multiply-adds{mark}")
        return "\n".join(lines)


def explain_higher_order(fn: Callable, x: jax.Array, *, num_corruptions: int = 4):
    """Which exact CAE+H forms apply to `fn` and what each costs (estimates of multiply-adds;
    autodiff counted as d·k forward-over-reverse passes of 4 forward costs each)."""
    _check("explain_higher_order", x)
    batch, d = x.shape[0], int(np.prod(x.shape[1:]))
    k = int(np.prod(jax.eval_shape(fn, x[0]).shape))
    choice, layers = hessian_route(fn, x)
    fwd = layers.forward_macs if not isinstance(layers, str) else 1
    costs = {"hessian/autodiff": batch * 4 * d * k * fwd}
    if not isinstance(layers, str):
        n1 = layers.row_norms.shape[0] if layers.row_norms is not None else 0
        per_unit = NUM_NODES * n1 * 2
        costs[f"monte_carlo/{num_corruptions}"] = 2 * num_corruptions * batch * k * fwd
        if layers.one_layer() and layers.row_norms is not None:
            costs["expected"] = batch * (2 * fwd + per_unit)
            costs["hessian/closed_form"] = batch * 3 * fwd
        if layers.dense_chain():
            widths = [n1] + [w.shape[0] for w in layers.inner]
            per_example = sum(k * a * b + a * n1 * (n1 + b) for a in widths for b in widths)
            costs["hessian/chain"] = batch * (3 * fwd + per_example) + n1 * n1 * d
    structure = layers if isinstance(layers, str) else layers.describe
    return HigherOrderCosts(structure, costs, choice)
