"""Exact squared Frobenius norms of per-example encoder Jacobians, ‖∂h(x_i)/∂x_i‖²_F.

The route is chosen from the computation, not the class: `fn` is traced at one example and read
as a chain of affine maps and elementwise segments (`aecore.jacobian.trace`); a chain takes the
cheapest exact structured route (`aecore.jacobian.routes`), anything else exact autodiff.
Clearly named random-projection *estimates* live here too. `explain` says what was found.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from aecore import _checks
from aecore.jacobian import estimate, routes, trace
from aecore.jacobian.estimate import ESTIMATOR_METHODS, frobenius_sq_estimate
from aecore.jacobian.higher_order import (
    frobenius_sq_diff,
    frobenius_sq_diff_expected,
    hessian_frobenius_sq,
)
from aecore.jacobian.routes import STRUCTURED_PRODUCTS, gram, structured_product, sym_quad

__all__ = [
    "ESTIMATOR_METHODS",
    "MODES",
    "STRUCTURED_PRODUCTS",
    "Explanation",
    "choose_mode",
    "explain",
    "frobenius_sq",
    "frobenius_sq_diff",
    "frobenius_sq_diff_expected",
    "frobenius_sq_estimate",
    "frobenius_sq_route",
    "gram",
    "hessian_frobenius_sq",
    "jacobian",
    "structured_product",
    "sym_quad",
]

MODES = ("auto", "jacfwd", "jacrev", "closed_form", "structured")
# Measured (benchmarks, conv-28x28x1-32 on XLA:CPU): rows pulled back through convolutions by
# batched transposed convolutions run at ~2/3 of jacrev's throughput, so a structured route over
# a chain with convolutions must save this factor in multiply-adds before `auto` prefers it.
CONV_MARGIN = 1.5


@dataclasses.dataclass(frozen=True)
class Explanation:
    """What the engine found in `fn` and what each exact route costs.

    Attributes:
      structure: the chain, e.g. "dense 784→256 · sigmoid", or "not a chain".
      costs: multiply-adds per batch of every exact route that applies.
      choice: the route `mode="auto"` runs.
      fallback: for a function that is not a chain, the primitive and source line that stopped
        the analysis; None for a chain.
    """

    structure: str
    costs: dict[str, int]
    choice: str
    fallback: str | None
    conv_margin: bool = False
    estimates: dict = dataclasses.field(default_factory=dict)  # explain(..., num_probes=p)

    def __str__(self) -> str:
        lines = [f"structure: {self.structure}"]
        if self.fallback:
            lines.append(f"fallback:  {self.fallback}")
        for route, macs in sorted(self.costs.items(), key=lambda kv: kv[1]):
            mark = "  <- auto" if route == self.choice else ""
            if route.startswith("structured") and self.conv_margin and not mark:
                mark = f"  (over convolutions: must save {CONV_MARGIN}x to be chosen)"
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
    """fn traced at one example of x: its chain (or why not) and the route costs."""

    def __init__(self, fn: Callable, x: jax.Array):
        self.program = trace.trace(fn, x[0])
        try:
            self.chain = trace.analyse(self.program)
            self.reason = None
        except trace.NotAChain as e:
            self.chain, self.reason = None, str(e)
        batch = x.shape[0]
        d = int(np.prod(x.shape[1:]))
        out = self.program.out
        k = int(np.prod(self.program.avals[out].shape)) if isinstance(out, int) else 1
        forward = sum(
            trace.linear_macs(trace.Block("linear", [op], 0, 0, (), ()))
            if op.name in ("dot_general", "conv_general_dilated")
            else int(np.prod(getattr(op.eqn.outvars[0].aval, "shape", ())))
            for op in self.program.ops
        )
        self.costs = routes.route_costs(self.chain, batch, d, k, max(forward, 1))

    def best(self, allowed=None) -> str:
        options = {r: c for r, c in self.costs.items() if allowed is None or r in allowed}
        if self.chain is not None and any(
            op.name == "conv_general_dilated" for b in self.chain.linear for op in b.ops
        ):
            options = {
                r: c * CONV_MARGIN if r.startswith("structured") else c for r, c in options.items()
            }
        # Ties go to the structured routes (listed last in the dict), then to jacrev.
        order = list(self.costs)[::-1]
        return min(options, key=lambda r: (options[r], order.index(r)))

    def route_for(self, mode: str, fn_name: str) -> str:
        if mode == "auto":
            return self.best()
        if mode in ("jacfwd", "jacrev"):
            return mode
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
    chain = engine.chain
    ctx = routes.Context(chain, trace.const_env(engine.program))
    per_example_diags = jax.vmap(lambda xi: routes.diagonals(ctx, xi))
    if route == "closed_form":
        if not chain.segments:  # a linear map: ‖A‖²_F, the same for every example
            total = jnp.sum(routes.row_norms(ctx, chain.linear[0]))
            return jnp.broadcast_to(total, (xs[0].shape[0],))
        rn = routes.row_norms(ctx, chain.linear[0])  # [n_1], once per batch

        def batch_fn(*xb):
            ds = [per_example_diags(v)[0] for v in xb]
            d = ds[0] if len(ds) == 1 else ds[0] - ds[1]
            # A matrix product, not a broadcast-and-sum over the batch: XLA:CPU reduces large
            # arrays over their leading axis slowly (see shared/PERFORMANCE.md).
            return (d**2) @ rn.astype(d.dtype)

        return _batched(batch_fn, xs, chunk_size)
    product = route.split("/")[1]
    mats = routes.chain_matrices(ctx)
    per_batch = {"gram": routes.gram_of_first(ctx)} if product == "gram" else {}
    code_side = jax.vmap(lambda ds: routes.code_side(ctx, ds, mats))

    def batch_fn(*xb):
        ms = [code_side(per_example_diags(v)) for v in xb]
        m = ms[0] if len(ms) == 1 else ms[0] - ms[1]  # J(x) − J(x') = (M_x − M_x') A_0
        return routes.final_step(ctx, m, product, per_batch)

    return _batched(batch_fn, xs, chunk_size)


def _autodiff_penalty(fn: Callable, route: str, xs: tuple, chunk_size: int | None) -> jax.Array:
    jac = jax.jacfwd(fn) if route == "jacfwd" else jax.jacrev(fn)
    if len(xs) == 1:
        per_example = lambda xi: jnp.sum(jac(xi) ** 2)  # noqa: E731
    else:
        per_example = lambda xi, xo: jnp.sum((jac(xi) - jac(xo)) ** 2)  # noqa: E731
    if chunk_size is None:
        return jax.vmap(per_example)(*xs)
    _checks.check_positive_int("chunk_size", chunk_size)
    return jax.lax.map(lambda a: per_example(*a), xs, batch_size=chunk_size)


def _penalty(fn, xs, mode, chunk_size):
    engine = _Engine(fn, xs[0])
    route = engine.route_for(mode, _describe_fn(fn))
    if route in ("jacfwd", "jacrev"):
        return _autodiff_penalty(fn, route, xs, chunk_size)
    return _chain_penalty(engine, route, xs, chunk_size)


ROUTES = ("closed_form", "structured/gram", "structured/direct", "jacrev", "jacfwd")


def frobenius_sq_route(
    fn: Callable, x: jax.Array, route: str, *, chunk_size: int | None = None
) -> jax.Array:
    """`frobenius_sq` by one named route of `explain` (e.g. "structured/gram"), for tests and
    benchmarks; raises a one-line ValueError if the route does not apply to `fn`."""
    _checks.check_choice("route", route, ROUTES)
    _check_batch("frobenius_sq_route", x)
    engine = _Engine(fn, x)
    if route not in engine.costs:
        raise ValueError(
            f"route {route!r} does not apply to {_describe_fn(fn)} "
            f"(structure: {engine.chain.describe() if engine.chain else engine.reason}); "
            f"it has {sorted(engine.costs)}"
        )
    if route in ("jacfwd", "jacrev"):
        return _autodiff_penalty(fn, route, (x,), chunk_size)
    return _chain_penalty(engine, route, (x,), chunk_size)


def choose_mode(fn: Callable, x: jax.Array) -> str:
    """The mode `auto` runs for `fn` on the batch `x`: "closed_form", "structured", "jacrev" or
    "jacfwd" (see `explain` for the structure found and every route's cost)."""
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
        (`estimate.estimator_reports`).

    Returns:
      An `Explanation`; `print` it for a readable report.
    """
    _check_batch("explain", x)
    engine = _Engine(fn, x)
    structure = engine.chain.describe() if engine.chain is not None else "not a chain"
    has_conv = engine.chain is not None and any(
        op.name == "conv_general_dilated" for b in engine.chain.linear for op in b.ops
    )
    reports = {} if num_probes is None else estimate.estimator_reports(fn, x, num_probes)
    return Explanation(
        structure, dict(engine.costs), engine.best(), engine.reason, has_conv, reports
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
        "closed_form" (one linear map then one elementwise segment) or "structured" (any
        chain: code-side product with the Gram matrix of the first map, or directly).
      chunk_size: evaluate the batch in chunks of this many examples (`jax.lax.map`), so the
        per-example Jacobian factors never have to fit in memory at once. None: all at once.

    Returns:
      [B] squared Frobenius norms (exact up to floating-point round-off).
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
