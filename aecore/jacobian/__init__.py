"""Exact squared Frobenius norms of per-example encoder Jacobians, ‖∂h(x_i)/∂x_i‖²_F.

The route is chosen from the computation, not the class: `fn` is traced at one example and read
by a registry of primitive rules (`aecore.jacobian.rules`) as a chain of affine maps and
elementwise segments, or as a leading affine map A_0 followed by anything
(`aecore.jacobian.trace`); the cheapest exact route by multiply-adds runs
(`aecore.jacobian.routes`): structured for a chain, the input-side peel ‖J_rest A_0‖² with
A_0's Gram matrix once per batch, the block-wise pullback part by part
(`aecore.jacobian.blocks`), or whole-function autodiff.
Clearly named random-projection *estimates* live here too. `explain` says what was found.
The decoder's pullback metric, its log-determinant and the reconstruction Jacobian
‖∂g(f(x))/∂x‖²_F are in `aecore.jacobian.geometry` (`explain_reconstruction`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from aecore import _checks
from aecore.jacobian import blocks, estimate, routes, trace
from aecore.jacobian.estimate import (
    ESTIMATOR_METHODS,
    frobenius_sq_estimate,
    frobenius_sq_interval,
)
from aecore.jacobian.geometry import (
    RECONSTRUCTION_MODES,
    ReconstructionExplanation,
    explain_reconstruction,
    pullback_logdet,
    pullback_metric,
    reconstruction_frobenius_sq,
    reconstruction_frobenius_sq_estimate,
    relaxed_distortion,
    relaxed_distortion_estimate,
)
from aecore.jacobian.higher_order import (
    frobenius_sq_diff,
    frobenius_sq_diff_expected,
    hessian_frobenius_sq,
)
from aecore.jacobian.routes import STRUCTURED_PRODUCTS

__all__ = [
    "ESTIMATOR_METHODS",
    "MODES",
    "RECONSTRUCTION_MODES",
    "STRUCTURED_PRODUCTS",
    "Explanation",
    "ReconstructionExplanation",
    "choose_mode",
    "explain",
    "explain_reconstruction",
    "frobenius_sq",
    "frobenius_sq_diff",
    "frobenius_sq_diff_expected",
    "frobenius_sq_estimate",
    "frobenius_sq_interval",
    "hessian_frobenius_sq",
    "jacobian",
    "pullback_logdet",
    "pullback_metric",
    "reconstruction_frobenius_sq",
    "reconstruction_frobenius_sq_estimate",
    "relaxed_distortion",
    "relaxed_distortion_estimate",
]

MODES = ("auto", "jacfwd", "jacrev", "closed_form", "structured", "peel", "blocks")


@dataclasses.dataclass(frozen=True)
class Explanation:
    """What the engine found in `fn` and what each exact route costs.

    Attributes:
      structure: the chain, e.g. "dense 784→256 · sigmoid", or the block structure of another
        function, e.g. "dense 3072→512 | residual[layer_norm · dense 512→512 · gelu] ×2 |
        dense 512→64 · tanh" (parts between " | ", the first an affine map the peel uses).
      costs: multiply-adds per batch of every exact route that applies.
      choice: the route `mode="auto"` runs.
      fallback: for a function that is not a chain, the primitive and source line that stopped
        the chain analysis; None for a chain.
      estimates: with `num_probes`, each estimator's cost and relative s.d.
      blocks: for a function that is not a chain, the block-wise route's parts and how each is
        pulled back, e.g. "residual[layer_norm (vjp) · dense 512→512 (pull) · gelu
        (diagonal)]" (`aecore.jacobian.blocks`); None for a chain.
    """

    structure: str
    costs: dict[str, int]
    choice: str
    fallback: str | None
    estimates: dict = dataclasses.field(default_factory=dict)
    blocks: str | None = None

    def __str__(self) -> str:
        lines = [f"structure: {self.structure}"]
        if self.fallback:
            lines.append(f"not a chain: {self.fallback}")
        if self.choice.startswith("peel"):
            first = self.structure.split(" | ", 1)[0]
            mode = self.choice.split("/")[1]
            lines.append(
                f"peel:      {first} by its Gram matrix once per batch, {mode} of the rest"
            )
        if self.blocks:
            lines.append(f"blocks:    {self.blocks}")
        for route, macs in sorted(self.costs.items(), key=lambda kv: kv[1]):
            mark = "  <- auto" if route == self.choice else ""
            lines.append(f"  {route:<18} {macs / 1e6:>12.2f} M multiply-adds{mark}")
        if self.estimates:
            lines.append(estimate.describe_reports(self.estimates))
        return "\n".join(lines)


def _check_batch(fn_name: str, x) -> None:
    if getattr(x, "ndim", 0) < 2:
        raise ValueError(
            f"{fn_name} needs a batch x of shape [B, *input_shape], "
            f"got shape {getattr(x, 'shape', None)}"
        )


def _describe_fn(fn) -> str:
    name = getattr(fn, "__qualname__", None) or type(fn).__name__
    return f"{name!s}"


class _Engine:
    """fn traced at one example of x: its chain (or why not), its leading affine map (if not a
    chain) and the route costs."""

    def __init__(self, fn: Callable, x: jax.Array):
        self.program = trace.trace(fn, x[0])
        self.peel: trace.Peel | None = None
        self.parts: list[blocks.Part] = []
        self.chain: trace.Chain | None
        self.reason: str | None
        try:
            self.chain = trace.analyse(self.program)
            self.reason = None
        except trace.NotAChain as e:
            self.chain, self.reason = None, str(e)
            self.peel = trace.peel(self.program)
            self.parts = blocks.parts_of(self.program)
        block_costs = blocks.route_costs(self.parts, self.program, x.shape[0])
        self.costs = routes.route_costs(
            self.program, self.chain, self.peel, x.shape[0], block_costs
        )

    def best(self, allowed=None) -> str:
        return routes.choose(self.costs, allowed)

    def describe(self) -> str:
        if self.chain is not None:
            return self.chain.describe()
        if self.peel is not None:
            return self.peel.describe()
        try:
            return trace.describe_ops(trace.live(self.program).ops, 0)
        except trace.NotAChain as e:  # an output that ignores x
            return str(e)

    def describe_blocks(self) -> str | None:
        """Each part of a non-chain and how the chosen (else cheapest) block route pulls it."""
        names = [r for r in self.costs if r.startswith("blocks")]
        if not names:
            return None
        route = self.best()
        route = route if route in names else self.best(names)
        first = "Gram" if route == "blocks/gram" else None
        return f"{route}: {blocks.describe(self.parts, first, 'matrix')}"

    def route_for(self, mode: str, fn_name: str) -> str:
        if mode == "auto":
            return self.best()
        if mode in ("jacfwd", "jacrev"):
            return mode
        needs = {
            "blocks": "is not a chain and has parts a rule covers",
            "peel": "is not a chain and first applies an affine map to x",
        }
        if mode in needs:
            names = [r for r in self.costs if r.startswith(mode)]
            if not names:
                raise ValueError(
                    f"mode {mode!r} needs a function that {needs[mode]}, {fn_name} is "
                    f"`{self.describe()}`; use mode='auto'"
                )
            return self.best(names)
        if self.chain is None:
            raise ValueError(
                f"mode {mode!r} needs a chain of affine maps and elementwise functions, but "
                f"{fn_name} is not one ({self.reason}); use mode='auto', 'jacfwd' or 'jacrev'"
            )
        if mode == "closed_form":
            if "closed_form" not in self.costs:
                raise ValueError(
                    f"mode 'closed_form' holds for one linear map then one elementwise segment, "
                    f"{fn_name} is `{self.chain.describe()}` ({len(self.chain.segments)} "
                    "elementwise segments); use mode='structured' or 'auto'"
                )
            return "closed_form"
        structured = [r for r in self.costs if r.startswith("structured")]
        return self.best(structured or ["closed_form"])


def _batched(batch_fn: Callable, args: tuple, chunk_size: int | None) -> jax.Array:
    """batch_fn on the whole batch, or chunk by chunk (`lax.map`) to bound memory."""
    if chunk_size is None:
        return batch_fn(*args)
    _checks.check_positive_int("chunk_size", chunk_size)
    b = args[0].shape[0]
    n, rest = divmod(b, chunk_size)
    parts = []
    if n:
        chunks = tuple(a[: n * chunk_size].reshape(n, chunk_size, *a.shape[1:]) for a in args)
        parts.append(jax.lax.map(lambda c: batch_fn(*c), chunks).reshape(-1))
    if rest:
        parts.append(batch_fn(*(a[n * chunk_size :] for a in args)))
    return jnp.concatenate(parts) if len(parts) > 1 else parts[0]


def _chain_penalty(engine: _Engine, route: str, xs: tuple, chunk_size: int | None) -> jax.Array:
    """‖J‖² (one batch) or ‖J(x) − J(x')‖² (two batches) by a structured route."""
    ctx = routes.Context(engine.chain, trace.const_env(engine.program), engine.program.avals)
    chain = ctx.the_chain()
    per_example_diags = jax.vmap(lambda xi: routes.diagonals(ctx, xi))
    if route == "closed_form":
        if not chain.segments:  # a linear map: ‖A‖²_F, the same for every example
            total = jnp.sum(routes.row_norms(ctx, chain.linear[0]))
            return jnp.broadcast_to(total, (xs[0].shape[0],))
        rn = routes.row_norms(ctx, chain.linear[0])  # [n_1], once per batch

        def closed_form_fn(*xb):
            ds = [per_example_diags(v)[0] for v in xb]
            d = ds[0] if len(ds) == 1 else ds[0] - ds[1]
            # A matrix product, not a broadcast-and-sum over the batch: XLA:CPU reduces large
            # arrays over their leading axis slowly (jax-ml/jax#25187).
            return (d**2) @ rn.astype(d.dtype)

        return _batched(closed_form_fn, xs, chunk_size)
    product = route.split("/")[1]
    mats = routes.chain_matrices(ctx)
    per_batch = {"gram": routes.gram_of(ctx, chain.linear[0])} if product == "gram" else {}
    code_side = jax.vmap(lambda ds: routes.code_side(ctx, ds, mats))

    def batch_fn(*xb):
        ms = [code_side(per_example_diags(v)) for v in xb]
        m = ms[0] if len(ms) == 1 else ms[0] - ms[1]  # J(x) − J(x') = (M_x − M_x') A_0
        return routes.final_step(ctx, m, product, per_batch)

    return _batched(batch_fn, xs, chunk_size)


def _autodiff_penalty(fn: Callable, route: str, xs: tuple, chunk_size: int | None) -> jax.Array:
    jac = jax.jacfwd(fn) if route == "jacfwd" else jax.jacrev(fn)
    per_example: Callable[..., jax.Array]
    if len(xs) == 1:
        per_example = lambda xi: jnp.sum(jac(xi) ** 2)  # noqa: E731
    else:
        per_example = lambda xi, xo: jnp.sum((jac(xi) - jac(xo)) ** 2)  # noqa: E731
    if chunk_size is None:
        return jax.vmap(per_example)(*xs)
    _checks.check_positive_int("chunk_size", chunk_size)
    return jax.lax.map(lambda a: per_example(*a), xs, batch_size=chunk_size)


def _peel_penalty(engine: _Engine, route: str, xs: tuple, chunk_size: int | None) -> jax.Array:
    """‖J_rest(a) A_0‖² = Σ (M G) ⊙ M, M = J_rest(A_0 x) [k, n_1] by autodiff in the n_1-space,
    G = A_0 A_0ᵀ once per batch; for two batches J(x) − J(x') = (M_x − M_x') A_0."""
    peel, program = engine.peel, engine.program
    if peel is None:
        raise ValueError("the peel route was asked of a function without a leading affine map")
    ctx = routes.Context(None, trace.const_env(program), program.avals)
    g = routes.gram_of(ctx, peel.first)  # [n_1, n_1]
    n1 = int(np.prod(peel.first.out_shape))

    def rest(a):
        return trace.run(peel.rest, ctx.env, peel.first.dst, a, dst=program.out).reshape(-1)

    jac = jax.jacfwd(rest) if route == "peel/jacfwd" else jax.jacrev(rest)

    def m_of(xi):  # [k, n_1]
        return jac(trace.run(peel.first.ops, ctx.env, 0, xi)).reshape(-1, n1)

    return _rows_penalty(m_of, g, xs, chunk_size)


def _blocks_penalty(engine: _Engine, route: str, xs: tuple, chunk_size: int | None):
    """M pulled back part by part (`blocks`); ‖M‖² at x, or ‖M A_0‖² by A_0's Gram matrix."""
    m_of, g = _blocks_rows(engine, route)
    return _rows_penalty(m_of, g, xs, chunk_size)


def _blocks_rows(engine: _Engine, route: str) -> tuple[Callable, jax.Array | None]:
    """(m_of, G) of a block route: m_of(x_i) [k, n] the rows pulled back part by part (to x, or
    to the first affine map's output for "blocks/gram", whose Gram matrix is G; else None)."""
    program, parts = engine.program, engine.parts
    ctx = routes.Context(None, trace.const_env(program), program.avals)
    gram = route == "blocks/gram"
    body = parts[1:] if gram else parts
    start = blocks.per_batch_start(ctx, body)
    g = routes.gram_of(ctx, parts[0].block(program.avals)) if gram else None

    def m_of(xi):  # [k, n]
        v = trace.run(parts[0].ops, ctx.env, 0, xi) if gram else xi
        m = blocks.rows_of(ctx, body, ctx.env, v, start)
        return m.reshape(m.shape[0], -1)

    return m_of, g


def _rows_penalty(m_of: Callable, g, xs: tuple, chunk_size: int | None) -> jax.Array:
    """Σ (M G) ⊙ M with the Gram matrix G of the first map (‖M‖² if G is None) for
    M = m_of(x_i) [k, n]; for two batches M = M_x − M_x'."""

    def batch_fn(*xb):
        ms = [jax.vmap(m_of)(v) for v in xb]
        m = ms[0] if len(ms) == 1 else ms[0] - ms[1]
        if g is None:
            return jnp.einsum("bkn,bkn->b", m, m)
        return routes.sym_quad(m, g.astype(m.dtype))  # the rows may change the dtype

    return _batched(batch_fn, xs, chunk_size)


def _run_route(fn, engine: _Engine, route: str, xs: tuple, chunk_size: int | None):
    if route in ("jacfwd", "jacrev"):
        return _autodiff_penalty(fn, route, xs, chunk_size)
    if route.startswith("peel"):
        return _peel_penalty(engine, route, xs, chunk_size)
    if route.startswith("blocks"):
        return _blocks_penalty(engine, route, xs, chunk_size)
    return _chain_penalty(engine, route, xs, chunk_size)


def _penalty(fn, xs, mode, chunk_size):
    engine = _Engine(fn, xs[0])
    return _run_route(fn, engine, engine.route_for(mode, _describe_fn(fn)), xs, chunk_size)


ROUTES = (
    "closed_form",
    "structured/gram",
    "structured/direct",
    "peel/jacrev",
    "peel/jacfwd",
    "blocks/gram",
    "blocks/direct",
    "jacrev",
    "jacfwd",
)


def frobenius_sq_route(
    fn: Callable, x: jax.Array, route: str, *, chunk_size: int | None = None
) -> jax.Array:
    """`frobenius_sq` by one named route of `explain` (e.g. "structured/gram"), for tests and
    benchmarks (not part of the public API); a one-line ValueError if it does not apply."""
    _checks.check_choice("route", route, ROUTES)
    _check_batch("frobenius_sq_route", x)
    engine = _Engine(fn, x)
    if route not in engine.costs:
        raise ValueError(
            f"route {route!r} does not apply to {_describe_fn(fn)} "
            f"(structure: {engine.chain.describe() if engine.chain else engine.reason}); "
            f"it has {sorted(engine.costs)}"
        )
    return _run_route(fn, engine, route, (x,), chunk_size)


def choose_mode(fn: Callable, x: jax.Array) -> str:
    """The mode `auto` runs for `fn` on the batch `x`: "closed_form", "structured", "peel",
    "blocks", "jacrev" or "jacfwd" (see `explain` for the structure and every route's cost)."""
    _check_batch("choose_mode", x)
    return _Engine(fn, x).best().split("/")[0]


def explain(fn: Callable, x: jax.Array, *, num_probes: int | None = None) -> Explanation:
    """The Jacobian structure of `fn` on the batch `x`, each exact route's cost and the choice.

    Args:
      fn: maps ONE example [*input_shape] to its code; any callable (nnx module, bound method,
        plain function closing over arrays, `functools.partial(linen_module.apply, params)`).
      x: batch [B, *input_shape] (only its shape and dtype matter, unless num_probes is set).
      num_probes: also list each estimator of `frobenius_sq_estimate` at this many probes:
        its cost and its relative s.d., measured on the first examples of x
        (`estimate.estimator_reports`), and the coverage its `frobenius_sq_interval` reached
        at nominal 95% in tests (`estimate.INTERVAL_COVERAGE`).

    Returns:
      An `Explanation`; `print` it for a readable report.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> from aecore.jacobian import explain
      >>> w1 = jax.random.normal(jax.random.key(0), (32, 64)) / 8
      >>> w2 = jax.random.normal(jax.random.key(1), (8, 32)) / 6
      >>> encode = lambda v: jax.nn.sigmoid(w2 @ jax.nn.sigmoid(w1 @ v))
      >>> report = explain(encode, jnp.zeros((16, 64)))  # only x's shape and dtype matter
      >>> print(report)
      structure: dense 64→32 · logistic · dense 32→8 · logistic
        structured/gram            0.24 M multiply-adds  <- auto
        structured/direct          0.30 M multiply-adds
        jacrev                     0.34 M multiply-adds
        jacfwd                     2.44 M multiply-adds
      >>> report.choice
      'structured/gram'
    """
    _check_batch("explain", x)
    engine = _Engine(fn, x)
    reports = {} if num_probes is None else estimate.estimator_reports(fn, x, num_probes)
    return Explanation(
        engine.describe(),
        dict(engine.costs),
        engine.best(),
        engine.reason,
        reports,
        engine.describe_blocks(),
    )


def frobenius_sq(
    fn: Callable, x: jax.Array, *, mode: str = "auto", chunk_size: int | None = None
) -> jax.Array:
    """Exact ‖∂fn(x_i)/∂x_i‖²_F for every example of a batch.

    Args:
      fn: maps ONE example [*input_shape] to its code. Any callable: it is traced at one
        example, and a chain of affine maps (dense, conv, reshapes, biases) and elementwise
        functions gets the structured routes, whatever class or library wrote it.
      x: batch [B, *input_shape].
      mode: "auto" (cheapest exact route by multiply-adds, see `explain`), "jacfwd", "jacrev",
        "closed_form" (one linear map then one elementwise segment), "structured" (any
        chain: code-side product with the Gram matrix of the first map, or directly), "peel"
        (not a chain, x first through an affine map A_0: autodiff of the rest, A_0's Gram) or
        "blocks" (not a chain: the rows pulled back part by part, `aecore.jacobian.blocks`).
      chunk_size: evaluate the batch in chunks of this many examples (`jax.lax.map`), so the
        per-example Jacobian factors never have to fit in memory at once. None: all at once.

    Returns:
      [B] squared Frobenius norms (exact up to floating-point round-off).

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> from aecore.jacobian import frobenius_sq
      >>> w = jnp.array([[1.0, 2.0], [0.0, 3.0]])  # h(x) = W x: ‖J‖²_F = ‖W‖²_F = 14
      >>> frobenius_sq(lambda v: w @ v, jnp.ones((3, 2)))
      Array([14., 14., 14.], dtype=float32)
      >>> w = jax.random.normal(jax.random.key(0), (5, 3))
      >>> encode = lambda v: jnp.tanh(w @ v)  # one example [3] -> its code [5]
      >>> x = jax.random.normal(jax.random.key(1), (4, 3))
      >>> exact = frobenius_sq(encode, x)
      >>> exact.shape
      (4,)
      >>> jac = jax.vmap(jax.jacrev(encode))(x)  # [4, 5, 3]: the Jacobians themselves
      >>> bool(jnp.allclose(exact, jnp.sum(jac**2, axis=(1, 2)), rtol=1e-5))
      True
    """
    _checks.check_choice("mode", mode, MODES)
    _check_batch("frobenius_sq", x)
    return _penalty(fn, (x,), mode, chunk_size)


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
