"""The block-wise route: rows of the Jacobian pulled back part by part from the code side.

A function that is not a chain splits, at the points where one x-dependent value carries
everything (`trace.cuts`), into parts, each pulled back by its own rule:

- an affine run (dense, conv, shape ops, biases): the rules' pullback (a convolution's own,
  with its one-matmul kernel gradient), or a per-batch matrix for the run nearest the code;
- an elementwise segment: a diagonal, read by one jvp per example;
- a residual block v ± f(v): rows ± rows·J_f, f's own parts pulled back the same way;
- anything else (LayerNorm, RMSNorm, gating, concatenation, a primitive no rule covers): that
  part alone by its vjp, linearised once per example and applied to the rows, O(rows × its
  cost); never the whole function.

The rows M (k of them, k the code size) end at x ("blocks/direct": ‖M‖²) or, when the function
starts with an affine map A_0, in its output space ("blocks/gram": ‖M A_0‖² = Σ (M G) ⊙ M with
G = A_0 A_0ᵀ once per batch). For two batches, J(x) − J(x') = (M_x − M_x') A_0 alike.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from aecore.jacobian import routes, rules, trace
from aecore.jacobian.rules import elementwise
from aecore.jacobian.trace import Block, Op

_HOW = {"linear": "pull", "elementwise": "diagonal", "vjp": "vjp"}


@dataclasses.dataclass
class Part:
    """One part between two cuts, from the value `src` to `dst`; `kind` is "linear",
    "elementwise", "residual" or "vjp" (pulled back by its own vjp)."""

    kind: str
    ops: list[Op]
    src: int
    dst: int
    name: str
    inner: list[Part] = dataclasses.field(default_factory=list)  # residual: f's parts
    signs: tuple[float, float] = (1.0, 1.0)  # residual: of the skip and of f

    def block(self, avals) -> Block:
        shape = lambda i: tuple(avals[i].shape)  # noqa: E731
        return Block("linear", self.ops, self.src, self.dst, shape(self.src), shape(self.dst))

    def describe(self, how: str | None = None) -> str:
        if self.kind == "residual":
            return f"residual[{describe(self.inner)}]"
        return f"{self.name} ({how or _HOW[self.kind]})"


def _residual(ops: list[Op], src: int, avals) -> Part | None:
    """v ± f(v) as the last equation of the part, f the equations before it; else None."""
    last = ops[-1]
    if last.name not in ("add", "add_any", "sub") or len(last.dep) != 2 or len(ops) < 2:
        return None
    a, b = last.ins
    if src not in (a, b) or a == b or ops[-2].outs[0] not in (a, b):
        return None
    if avals[a].shape != avals[b].shape:
        return None
    signs = (1.0, 1.0)
    if last.name == "sub":
        signs = (1.0, -1.0) if a == src else (-1.0, 1.0)
    inner = split(ops[:-1], src, avals)
    return Part("residual", ops, src, last.outs[0], "residual", inner, signs)


def _part(ops: list[Op], src: int, dst: int, avals) -> Part:
    shape = tuple(avals[src].shape)
    if len(ops) == 1 and rules.is_linear(ops[0]):
        return Part("linear", ops, src, dst, rules.linear_rule(ops[0]).label(ops[0]) or "")
    if tuple(avals[dst].shape) == shape and all(elementwise.is_elementwise(o, shape) for o in ops):
        name = "+".join(dict.fromkeys(elementwise.label(o) for o in ops))
        return Part("elementwise", ops, src, dst, name)
    residual = _residual(ops, src, avals)
    if residual is not None:
        return residual
    return Part("vjp", ops, src, dst, trace.describe_part(ops, src))


def split(ops: list[Op], start: int, avals, end: int | None = None) -> list[Part]:
    """The parts of the x-dependent equations `ops` from the value `start` to `end` (default:
    the last equation's first output), in order; runs of affine equations and of elementwise
    segments merged into one part each."""
    parts: list[Part] = []
    for chunk, src in trace.between_cuts(ops, start):
        dst = end if chunk[-1] is ops[-1] and end is not None else chunk[-1].outs[0]
        part = _part(chunk, src, dst, avals)
        prev = parts[-1] if parts else None
        if prev is not None and prev.kind == part.kind and part.kind in ("linear", "elementwise"):
            names = [n for n in (prev.name, part.name) if n]
            sep = " · " if part.kind == "linear" else "+"
            parts[-1] = Part(part.kind, prev.ops + part.ops, prev.src, part.dst, sep.join(names))
        else:
            parts.append(part)
    for p in parts:
        if p.kind == "linear" and not p.name:
            p.name = "reshape" if p.block(avals).isometric else "linear"
    return parts


def _floating(parts: list[Part], avals) -> bool:
    for p in parts:
        if not all(jnp.issubdtype(avals[v].dtype, jnp.floating) for v in (p.src, p.dst)):
            return False
        if not _floating(p.inner, avals):
            return False
    return True


def parts_of(program: trace.Program) -> list[Part]:
    """The parts of a function that is not a chain, or [] where the block routes do not apply:
    no part a rule covers (that would be jacrev under another name), an integer value between
    parts (its derivative is zero, not a row to pull), or an output that ignores x."""
    try:
        lv = trace.live(program)
    except trace.NotAChain:
        return []
    assert isinstance(program.out, int)  # live() raises for an output that ignores x
    parts = split(lv.ops, 0, program.avals, program.out)
    if all(p.kind == "vjp" for p in parts) or not _floating(parts, program.avals):
        return []
    return parts


def describe(parts: list[Part], first_how: str | None = None, last_how: str | None = None):
    """Each part and how its rows are pulled back, e.g. "dense 3072→512 (Gram) ·
    residual[layer_norm (vjp) · dense 512→512 (pull) · gelu (diagonal)] ×2 · ..."."""
    matrix = _tail_matrix(parts)
    names = []
    for i, p in enumerate(parts):
        how = first_how if i == 0 else None
        names.append(p.describe(how or (last_how if p is matrix else None)))
    return " · ".join(trace.merge_repeats(names))


# ---------------------------------------------------------------------------------------------
# Costs, in multiply-adds of one row pulled back (per example).


def pull_macs(parts: list[Part]) -> int:
    total = 0
    for p in parts:
        if p.kind == "residual":
            total += pull_macs(p.inner) + rules.macs(p.ops[-1])
        elif p.kind == "elementwise":  # one multiply by the diagonal per entry
            total += rules.macs(p.ops[-1])
        else:  # an affine run or a vjp: about one evaluation of its equations per row
            total += sum(rules.macs(op) for op in p.ops)
    return total


def _tail(parts: list[Part]) -> int:
    """How many parts at the code end the per-batch start covers (an elementwise segment and
    the affine run before it)."""
    n = 0
    if parts and parts[-1].kind == "elementwise":
        n = 1
    if len(parts) > n and parts[-1 - n].kind == "linear":
        n += 1
    return n


def _tail_matrix(parts: list[Part]) -> Part | None:
    """The affine run nearest the code, whose matrix is formed once per batch, or None."""
    tail = _tail(parts)
    first = parts[len(parts) - tail] if tail else None
    return first if first is not None and first.kind == "linear" else None


def route_costs(parts: list[Part], program: trace.Program, batch: int) -> dict[str, int]:
    """Multiply-adds per batch of blocks/direct and (when the function starts with an affine
    map) blocks/gram; {} without parts."""
    if not parts:
        return {}
    avals, forward = program.avals, routes.forward_macs(program)
    k = int(np.prod(avals[parts[-1].dst].shape))
    matrix = _tail_matrix(parts)
    start = routes.matrix_cost(matrix.block(avals)) if matrix is not None else 0
    body = parts[: len(parts) - _tail(parts)]
    costs = {"blocks/direct": batch * (forward + k * pull_macs(body)) + start}
    first = parts[0]
    if first.kind == "linear" and len(body) > 1 and not first.block(avals).isometric:
        b = first.block(avals)
        n1, d = int(np.prod(b.out_shape)), int(np.prod(b.in_shape))
        rest = batch * (forward + k * pull_macs(body[1:]) + k * n1 * n1) + start
        costs["blocks/gram"] = rest + routes.matrix_cost(b) + d * n1 * n1
    return costs


# ---------------------------------------------------------------------------------------------
# Evaluation, per example (vmapped by the caller): forward through the parts, keeping what each
# pullback needs, then the rows back from the code side.


def _bind_last(part: Part, value, branch):
    last = part.ops[-1]
    vals = [value if v == part.src else branch for v in last.ins]
    return last.bind(vals)[0]


def forward(parts: list[Part], env: dict, value) -> tuple[object, list]:
    """The parts' output from `value` at parts[0].src and each part's record: None (affine),
    the diagonal (elementwise), the inner records (residual) or the vjp function."""
    tape: list = []
    for p in parts:

        def fn(v, p=p):
            return trace.run(p.ops, env, p.src, v, dst=p.dst)

        if p.kind == "linear":
            value, rec = fn(value), None
        elif p.kind == "elementwise":
            value, rec = jax.jvp(fn, (value,), (jnp.ones_like(value),))
        elif p.kind == "residual":
            branch, rec = forward(p.inner, env, value)
            value = _bind_last(p, value, branch)
        else:
            value, rec = jax.vjp(fn, value)
        tape.append(rec)
    return value, tape


def pull(ctx, parts: list[Part], tape: list, rows: jax.Array) -> jax.Array:
    """rows [R, |dst|] of the last part pulled back to parts[0].src: [R, |src|]."""
    for p, rec in zip(reversed(parts), reversed(tape), strict=True):
        rows = rows.astype(ctx.dtype(p.dst))  # a part may change the dtype
        if p.kind == "linear":
            rows = routes.pull(ctx, p.block(ctx.avals), rows)
        elif p.kind == "elementwise":
            rows = rows * rec.reshape(1, -1)
        elif p.kind == "residual":
            skip, branch = p.signs
            rows = skip * rows + branch * pull(ctx, p.inner, rec, rows)
        else:
            shape = ctx.avals[p.dst].shape
            rows = jax.vmap(lambda r, rec=rec, s=shape: rec(r.reshape(s))[0].reshape(-1))(rows)
    return rows.astype(ctx.dtype(parts[0].src)) if parts else rows


def per_batch_start(ctx, parts: list[Part]):
    """The matrix of the affine run nearest the code, once per batch (None if there is none)."""
    matrix = _tail_matrix(parts)
    return None if matrix is None else routes.matrix(ctx, matrix.block(ctx.avals))


def rows_of(ctx, parts: list[Part], env: dict, value, start) -> jax.Array:
    """M = J(value) [k, |parts[0].src|] for one example: the code-side tail from `start`, the
    rest pulled back part by part."""
    _, tape = forward(parts, env, value)
    cut = len(parts) - _tail(parts)
    scale = tape[-1].reshape(-1) if parts and parts[-1].kind == "elementwise" else None
    if start is not None:
        rows = start if scale is None else scale[:, None] * start
    elif scale is not None:
        rows = jnp.diag(scale)
    else:
        k = int(np.prod(ctx.avals[parts[-1].dst].shape))
        rows = jnp.eye(k, dtype=ctx.dtype(parts[-1].dst))
    return pull(ctx, parts[:cut], tape[:cut], rows)
