"""Exact routes (closed form, code-side chain with Gram or direct product, input-side peel,
autodiff), their multiply-add costs and the choice among them, in one place; per-batch
constants are computed once, outside the example vmap.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from aecore.jacobian import rules, trace
from aecore.jacobian.trace import Block, Chain

STRUCTURED_PRODUCTS = ("direct", "gram")


@jax.custom_vjp
def gram(w: jax.Array) -> jax.Array:
    """wᵀw [n, n] for w [r, n], with a one-matmul backward.

    Plain autodiff of wᵀw pulls the cotangent back through both operands (two matmuls); since
    the output is symmetric, dw = w (c + cᵀ) needs one.
    """
    return w.T @ w


def _gram_fwd(w):
    return w.T @ w, w


def _gram_bwd(w, ct):
    return (w @ (ct + ct.T),)


gram.defvjp(_gram_fwd, _gram_bwd)


@jax.custom_vjp
def sym_quad(m: jax.Array, g: jax.Array) -> jax.Array:
    """Σ_{k} (m_b g m_bᵀ)_kk = tr(m_b g m_bᵀ) per example for m [B, k, n], g [n, n] SYMMETRIC.

    The forward product p = m g is kept: for symmetric g the cotangent of m is 2 ct_b p_b (no
    matmul), and that of g is Σ_b ct_b m_bᵀ m_b, one [n, B·k] × [B·k, n] matmul. Plain autodiff
    needs three such matmuls. Only valid for symmetric g (the caller passes a Gram matrix).
    """
    return _sym_quad_fwd(m, g)[0]


def _sym_quad_fwd(m, g):
    p = jnp.einsum("bkn,nm->bkm", m, g)  # [B, k, n]
    return jnp.sum(p * m, axis=(1, 2)), (m, p)


def _sym_quad_bwd(res, ct):
    m, p = res
    n = m.shape[-1]
    ct_m = 2 * ct[:, None, None] * p
    weighted = (ct[:, None, None] * m).reshape(-1, n)  # [B·k, n]
    ct_g = weighted.T @ m.reshape(-1, n)  # a matmul: XLA:CPU sums over a leading axis slowly
    return ct_m, ct_g


sym_quad.defvjp(_sym_quad_fwd, _sym_quad_bwd)


# ---------------------------------------------------------------------------------------------
# Costs, in multiply-adds per batch, from the shapes alone.


def _size(shape) -> int:
    return int(np.prod(shape))


def matrix_cost(block: Block) -> int:
    """Materialising a block's [n_out, n_in] matrix: free for x·W, else one map per basis vector."""
    if block.isometric or trace.has_dense_matrix(block):
        return 0
    return min(_size(block.in_shape), _size(block.out_shape)) * trace.linear_macs(block)


def forward_macs(program: trace.Program) -> int:
    """Multiply-adds of one evaluation of the whole program (at least 1)."""
    return max(sum(rules.macs(op) for op in program.ops), 1)


def route_costs(
    program: trace.Program,
    chain: Chain | None,
    peel: trace.Peel | None,
    batch: int,
    block_costs: dict[str, int] | None = None,
) -> dict[str, int]:
    """Multiply-adds per batch of every exact route that applies to the traced function;
    `block_costs` (`blocks.route_costs`) are listed before the peel, which wins a tie."""
    d = _size(program.avals[0].shape)
    out = program.out
    k = _size(program.avals[out].shape) if isinstance(out, int) else 1
    forward = forward_macs(program)
    costs = {"jacrev": batch * (forward + k * forward), "jacfwd": batch * (forward + d * forward)}
    costs |= block_costs or {}
    if chain is not None:
        costs |= _chain_costs(chain, batch, k, forward)
    if peel is not None:
        costs |= _peel_costs(peel, batch, k)
    return costs


def _peel_costs(peel: trace.Peel, batch: int, k: int) -> dict[str, int]:
    """J_rest by reverse (k pullbacks) or forward mode (n_1 pushforwards) in the n_1-space of
    a_1 = A_0 x, then Σ (M G) ⊙ M with G = A_0 A_0ᵀ formed once per batch."""
    first = peel.first
    n1, d = _size(first.out_shape), _size(first.in_shape)
    rest = max(sum(rules.macs(op) for op in peel.rest), 1)
    shared = batch * (trace.linear_macs(first) + rest + k * n1 * n1)
    shared += matrix_cost(first) + d * n1 * n1
    return {"peel/jacrev": shared + batch * k * rest, "peel/jacfwd": shared + batch * n1 * rest}


def _chain_costs(chain: Chain, batch: int, k: int, forward: int) -> dict[str, int]:
    lin, segs = chain.linear, chain.segments
    first = lin[0]
    rn_cost = trace.linear_macs(first)
    if not trace.row_norms_propagate(first, chain.program.avals):
        rn_cost += matrix_cost(first) + _size(first.in_shape) * _size(first.out_shape)
    if not segs or (len(segs) == 1 and lin[-1].isometric):
        return {"closed_form": batch * forward + rn_cost}
    n_l = len(segs)
    if lin[-1].isometric:
        prev = lin[n_l - 1]
        chain_cost = matrix_cost(prev) + batch * k * _size(prev.in_shape)
        pulled = range(1, n_l - 1)
    else:
        chain_cost = matrix_cost(lin[-1]) + batch * k * _size(lin[-1].in_shape)
        pulled = range(1, n_l)
    chain_cost += sum(batch * k * trace.linear_macs(lin[i]) for i in pulled)
    base = batch * forward + chain_cost
    s1 = _size(first.out_shape)
    if first.isometric:
        return {"structured/direct": base + batch * k * s1}
    return {
        "structured/direct": base + batch * k * trace.linear_macs(first),
        "structured/gram": (
            base + batch * k * s1 * s1 + matrix_cost(first) + _size(first.in_shape) * s1 * s1
        ),
    }


def choose(costs: dict[str, int], allowed=None) -> str:
    """The cheapest route of `costs` (restricted to `allowed`); ties go to the structured and
    peel routes (listed last), then to the block routes, then to jacrev.

    Rows pulled back through a convolution by the conv rule's own gradient run at about
    jacrev's throughput (benchmarks, conv-28-c32s2-c64s2-d16), so multiply-adds compare fairly.
    """
    options = {r: c for r, c in costs.items() if allowed is None or r in allowed}
    order = list(costs)[::-1]
    return min(options, key=lambda r: (options[r], order.index(r)))


# ---------------------------------------------------------------------------------------------
# Evaluation. `env` holds the program's x-independent values (parameters), computed per batch.


@dataclasses.dataclass
class Context:
    chain: Chain | None
    env: dict
    avals: dict

    def dtype(self, i: int):
        return self.avals[i].dtype

    def the_chain(self) -> Chain:
        """The chain, for the chain routes (a peel's or blocks' context has none)."""
        if self.chain is None:
            raise ValueError("a chain route was asked of a function that is not a chain")
        return self.chain


def _flat_linear(ctx: Context, block: Block):
    def f(v):
        v = v.reshape(block.in_shape)
        return trace.run(block.ops, ctx.env, block.src, v, linear_part=True).reshape(-1)

    return f


def matrix(ctx: Context, block: Block) -> jax.Array:
    """[n_out, n_in] matrix of the block's linear map (once per batch)."""
    m = trace.dense_matrix(block, ctx.env)
    if m is not None:
        return m
    n_in, n_out = _size(block.in_shape), _size(block.out_shape)
    zero = jnp.zeros(n_in, ctx.dtype(block.src))
    jac = jax.jacfwd if n_in <= n_out else jax.jacrev
    return jac(_flat_linear(ctx, block))(zero)


def pull(ctx: Context, block: Block, rows: jax.Array) -> jax.Array:
    """rows · A for rows [k, n_out]: each row pulled back through the linear map, [k, n_in].

    One vjp of the whole block, unless a rule pulls rows back through one of its equations
    faster (a convolution): then equation by equation, from the last.
    """
    rows = rows.astype(ctx.dtype(block.dst))
    if all(type(rules.linear_rule(op)).pull is rules.Rule.pull for op in block.ops):
        zero = jnp.zeros(_size(block.in_shape), ctx.dtype(block.src))
        _, vjp = jax.vjp(_flat_linear(ctx, block), zero)
        return jax.vmap(lambda r: vjp(r)[0])(rows)
    rows = rows.reshape(rows.shape[0], *block.out_shape)
    for op in reversed(block.ops):
        vals = [v.value if isinstance(v, trace.Lit) else ctx.env.get(v) for v in op.ins]
        rule, d = rules.linear_rule(op), op.dep[0]
        pulled = rule.pull(op, vals, rows)
        if pulled is None:
            aval: Any = op.eqn.invars[d].aval

            def lin(v, op=op, vals=vals, rule=rule, d=d):
                return rule.linear_part(op, [v if i == d else u for i, u in enumerate(vals)])

            _, vjp = jax.vjp(lin, jnp.zeros(aval.shape, aval.dtype))
            pulled = jax.vmap(lambda r, vjp=vjp: vjp(r)[0])(rows)
        rows = pulled
    return rows.reshape(rows.shape[0], _size(block.in_shape))


def row_norms(ctx: Context, block: Block) -> jax.Array:
    """Squared row norms of A_0, flattened [n_out] (once per batch)."""
    rn = None
    if trace.row_norms_propagate(block, ctx.avals):
        rn = trace.row_norms_sq(block, ctx.env, block.in_shape, ctx.dtype(block.src))
    if rn is None:
        rn = jnp.sum(matrix(ctx, block) ** 2, axis=1)
    return rn.reshape(-1)


def diagonals(ctx: Context, xi: jax.Array) -> list[jax.Array]:
    """g'(a) of every elementwise segment for one example, each flattened: a jvp with ones."""
    val, out = xi, []
    chain = ctx.the_chain()
    for lin, seg in zip(chain.linear, chain.segments, strict=False):
        a = trace.run(lin.ops, ctx.env, lin.src, val)

        def seg_fn(v, seg=seg):
            return trace.run(seg.ops, ctx.env, seg.src, v)

        val, d = jax.jvp(seg_fn, (a,), (jnp.ones_like(a),))
        out.append(d.reshape(-1))
    return out


def code_side(ctx: Context, ds: list[jax.Array], mats: dict) -> jax.Array:
    """M = A_L D_L A_{L−1} ⋯ A_1 D_1 for one example, [k, n_1], chained from the code side."""
    lin, n_l = ctx.the_chain().linear, len(ds)
    if lin[-1].isometric:  # a permutation of the code: ‖·‖_F does not see it
        if n_l == 1:
            return jnp.diag(ds[0])
        # The leading D_L is diagonal: a broadcast against a per-batch matrix, not a matmul.
        r = ds[-1][:, None] * mats[n_l - 1] * ds[-2][None, :]
        start = n_l - 2
    else:
        r = mats[n_l] * ds[-1][None, :]
        start = n_l - 1
    for i in range(start, 0, -1):
        r = pull(ctx, lin[i], r) * ds[i - 1][None, :]
    return r


def chain_matrices(ctx: Context) -> dict[int, jax.Array]:
    chain = ctx.the_chain()
    lin, n_l = chain.linear, len(chain.segments)
    if lin[-1].isometric:
        return {n_l - 1: matrix(ctx, lin[n_l - 1])} if n_l > 1 else {}
    return {n_l: matrix(ctx, lin[n_l])}


def final_step(ctx: Context, m: jax.Array, product: str, per_batch: dict) -> jax.Array:
    """‖M A_0‖²_F per example for M [B, k, n_1]: by the Gram matrix of A_0 or directly."""
    first = ctx.the_chain().linear[0]
    if first.isometric:
        return jnp.sum(m**2, axis=(1, 2))
    if product == "gram":
        return sym_quad(m, per_batch["gram"])
    return jax.vmap(lambda mi: jnp.sum(pull(ctx, first, mi) ** 2))(m)


def gram_of(ctx: Context, block: Block) -> jax.Array:
    """A A^T [n_out, n_out] of a block's linear map, once per batch, with the symmetric
    one-matmul backward."""
    return gram(matrix(ctx, block).T)
