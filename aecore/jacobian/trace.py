"""Jacobian structure of a per-example function, read from its jaxpr (not from its class).

`analyse(fn, x0)` traces `fn` at one example and splits it into a chain
h = A_L ∘ D_L ∘ ⋯ ∘ D_1 ∘ A_0 of affine maps A_l and elementwise segments D_l, or says which
equation stops that. Each primitive family has one small rule below; nothing is guessed.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import jax.extend as jex
import jax.numpy as jnp
import numpy as np

# Primitives acting entry by entry: with operands of one shape (or scalars) their Jacobian is
# diagonal. Their derivative is never looked up: a segment's diagonal comes from a jvp.
ELEMENTWISE = frozenset(
    """abs acos acosh add add_any and asin asinh atan atan2 atanh cbrt ceil clamp
    convert_element_type copy copy_p cos cosh digamma div eq erf erf_inv erfc exp exp2 expm1
    floor ge gt integer_pow is_finite le lgamma log log1p logistic lt max min mul ne neg not or pow
    reduce_precision rem round rsqrt select_n sign sin sinh sqrt square sub tan tanh xor""".split()
)
# Calls whose body is another jaxpr: inlined (jit) or checked to be elementwise (custom rules).
INLINED = frozenset({"jit", "pjit", "closed_call", "core_call", "remat", "checkpoint"})
CUSTOM = frozenset({"custom_jvp_call", "custom_vjp_call", "custom_vjp_call_jaxpr"})
# Linear maps that only move entries: they keep ‖·‖_F, so a trailing one can be dropped.
ISOMETRIC = frozenset(
    "reshape transpose squeeze expand_dims rev copy copy_p convert_element_type".split()
)
SHAPE_LINEAR = ISOMETRIC | {"broadcast_in_dim", "slice", "pad", "concatenate", "reduce_sum", "neg"}
# Orthogonal-row-preserving ops (see `row_norms_sq`): each output row is one input row, scaled.
_SELECTING = ISOMETRIC | set("slice pad concatenate neg mul div add sub add_any".split())


@dataclasses.dataclass(frozen=True)
class Lit:
    """A literal operand of an equation."""

    value: object


@dataclasses.dataclass
class Op:
    """One flattened equation: ints name values, `Lit` holds literals."""

    eqn: object
    ins: tuple
    outs: tuple[int, ...]
    where: str  # enclosing jit names, for `explain`

    @property
    def name(self) -> str:
        return self.eqn.primitive.name

    def source(self) -> str:
        try:
            from jax._src import source_info_util

            return source_info_util.summarize(self.eqn.source_info)
        except Exception:  # noqa: BLE001 - only a hint for the message
            return "unknown source"

    def bind(self, vals: list):
        params = self.eqn.primitive.get_bind_params(self.eqn.params)
        out = self.eqn.primitive.bind(*vals, **params)
        return out if self.eqn.primitive.multiple_results else [out]


@dataclasses.dataclass
class Program:
    """A jaxpr flattened through jit calls: input 0 is the example, consts hold parameters."""

    ops: list[Op]
    consts: dict[int, object]
    avals: dict[int, object]
    out: int | Lit


def _flatten(closed, x_aval) -> Program:
    ids: dict[object, int | Lit] = {}
    avals: dict[int, object] = {}
    consts: dict[int, object] = {}
    ops: list[Op] = []

    def new(var) -> int:
        i = len(avals)
        avals[i] = var.aval
        ids[var] = i
        return i

    def read(v):
        return Lit(v.val) if isinstance(v, jex.core.Literal) else ids[v]

    def walk(jaxpr, const_vals, in_ids, where):
        for var, val in zip(jaxpr.constvars, const_vals, strict=True):
            consts[new(var)] = val
        for var, i in zip(jaxpr.invars, in_ids, strict=True):
            ids[var] = i
        for eqn in jaxpr.eqns:
            ins = tuple(read(v) for v in eqn.invars)
            if eqn.primitive.name in INLINED and "jaxpr" in eqn.params:
                inner = eqn.params["jaxpr"]
                inner_jaxpr = getattr(inner, "jaxpr", inner)
                lits = []
                for i in ins:  # literals entering a call become constants of its body
                    if isinstance(i, Lit):
                        j = len(avals)
                        avals[j] = jax.typeof(i.value)
                        consts[j] = i.value
                        lits.append(j)
                    else:
                        lits.append(i)
                name = eqn.params.get("name", eqn.primitive.name)
                walk(inner_jaxpr, getattr(inner, "consts", ()), lits, f"{where}{name}/")
                for outer, inner_out in zip(eqn.outvars, inner_jaxpr.outvars, strict=True):
                    ids[outer] = read(inner_out)
                    if isinstance(ids[outer], Lit):  # a literal output: make it a constant
                        j = len(avals)
                        avals[j] = outer.aval
                        consts[j] = ids[outer].value
                        ids[outer] = j
                continue
            outs = tuple(new(v) for v in eqn.outvars)
            ops.append(Op(eqn, ins, outs, where))

    jaxpr = closed.jaxpr
    x_var = jaxpr.invars[0]
    ids[x_var] = 0
    avals[0] = x_aval
    walk(jaxpr, closed.consts, [0], "")
    (out,) = jaxpr.outvars
    return Program(ops, consts, avals, read(out))


def _is_elementwise_jaxpr(jaxpr, shape) -> bool:
    """A call body that computes entry by entry on arrays of `shape`: every equation that
    depends on the inputs is elementwise on that shape (constants may be built any way)."""
    dep = set(jaxpr.invars)
    for eqn in jaxpr.eqns:
        if not any(not isinstance(v, jex.core.Literal) and v in dep for v in eqn.invars):
            continue
        dep.update(eqn.outvars)
        name = eqn.primitive.name
        if name in INLINED | CUSTOM:
            inner = eqn.params.get("jaxpr", eqn.params.get("call_jaxpr"))
            if inner is None or not _is_elementwise_jaxpr(getattr(inner, "jaxpr", inner), shape):
                return False
        elif name not in ELEMENTWISE:
            return False
        for v in (*eqn.invars, *eqn.outvars):
            if getattr(v.aval, "shape", None) not in (shape, ()):
                return False
    return True


@dataclasses.dataclass
class Block:
    """One piece of the chain: "linear" (affine map) or "elementwise" (diagonal Jacobian)."""

    kind: str
    ops: list[Op]
    src: int
    dst: int
    in_shape: tuple[int, ...]
    out_shape: tuple[int, ...]

    @property
    def isometric(self) -> bool:
        return self.kind == "linear" and all(op.name in ISOMETRIC for op in self.ops)

    def describe(self) -> str:
        if self.kind == "elementwise":
            labels = []
            for op in self.ops:
                label = op.where.strip("/").split("/")[0] if op.where else ""
                if op.name in CUSTOM and not label:
                    inner = op.eqn.params.get("call_jaxpr", op.eqn.params.get("fun_jaxpr"))
                    eqns = getattr(getattr(inner, "jaxpr", inner), "eqns", [])
                    names = [e.params.get("name") for e in eqns if "name" in e.params]
                    label = str(names[0]) if names else ""
                label = label or op.name
                if label not in labels:
                    labels.append(label)
            return "+".join(labels)
        parts = []
        for op in self.ops:
            if op.name == "dot_general":
                n_in = int(np.prod(op.eqn.invars[_dep_index(op)].aval.shape))
                parts.append(f"dense {n_in}→{int(np.prod(op.eqn.outvars[0].aval.shape))}")
            elif op.name == "conv_general_dilated":
                lhs = op.eqn.invars[0].aval.shape
                parts.append(f"conv {_dims(lhs)}→{_dims(op.eqn.outvars[0].aval.shape)}")
        return " · ".join(parts) or ("reshape" if self.isometric else "linear")


def _dims(shape) -> str:
    return "x".join(str(s) for s in shape if s != 1) or "1"


def _dep_index(op: Op) -> int:
    return getattr(op, "_dep", 0)


@dataclasses.dataclass
class Chain:
    """h = A_L ∘ D_L ∘ ⋯ ∘ D_1 ∘ A_0: `linear[l]` = A_l (L + 1 of them), `segments[l]` = D_{l+1}."""

    program: Program
    linear: list[Block]
    segments: list[Block]

    def describe(self) -> str:
        parts = []
        for lin, seg in zip(self.linear, self.segments, strict=False):
            if not lin.isometric:
                parts.append(lin.describe())
            parts.append(seg.describe())
        if not self.linear[-1].isometric:
            parts.append(self.linear[-1].describe())
        return " · ".join(parts) or "reshape"


class NotAChain(Exception):
    """The function is not a chain of affine maps and elementwise segments; says where."""


def _stop(op: Op, why: str) -> NotAChain:
    return NotAChain(f"{op.name} at {op.source()}: {why}")


def _linear_in(op: Op, dep: set[int], cur: int) -> bool:
    """Is `op` an affine map of its only x-dependent operand `cur`?"""
    dep_pos = [i for i, v in enumerate(op.ins) if isinstance(v, int) and v in dep]
    if len(dep_pos) != 1 or op.ins[dep_pos[0]] != cur or len(op.outs) != 1:
        return False
    op._dep = dep_pos[0]
    name = op.name
    if name == "dot_general":
        return True
    if name == "conv_general_dilated":
        return dep_pos[0] == 0
    if name == "div":
        return dep_pos[0] == 0
    if name in ("mul", "add", "sub", "add_any", "concatenate"):
        return True
    if name == "pad":
        return dep_pos[0] == 0
    if name == "convert_element_type":
        return jnp.issubdtype(op.eqn.outvars[0].aval.dtype, jnp.floating)
    return name in SHAPE_LINEAR


def _elementwise_op(op: Op, shape) -> bool:
    if len(op.outs) != 1 or op.eqn.outvars[0].aval.shape != shape:
        return False
    for v in op.eqn.invars:
        if getattr(v.aval, "shape", None) not in (shape, ()):
            return False
    if op.name in CUSTOM:
        inner = op.eqn.params.get("call_jaxpr", op.eqn.params.get("fun_jaxpr"))
        if inner is None or not _is_elementwise_jaxpr(getattr(inner, "jaxpr", inner), shape):
            return False
        return _custom_rule_is_elementwise(op, shape)
    return op.name in ELEMENTWISE


def _custom_rule_is_elementwise(op: Op, shape) -> bool:
    """The custom derivative rule itself must act entry by entry: its jvp is traced and checked,
    since the segment's diagonal is read from that rule (a mixing rule would be misread)."""
    avals = [v.aval for v in op.eqn.invars]
    if not all(jnp.issubdtype(a.dtype, jnp.floating) for a in avals):
        return False
    primals = [jnp.zeros(a.shape, a.dtype) for a in avals]
    try:
        jvp = jax.make_jaxpr(lambda p, t: jax.jvp(lambda *a: op.bind(list(a))[0], p, t))
        return _is_elementwise_jaxpr(jvp(primals, primals).jaxpr, shape)
    except Exception:  # noqa: BLE001 - a rule that cannot be traced alone is not trusted
        return False


def trace(fn: Callable, x0) -> Program:
    """The flattened jaxpr of `fn` at one example `x0` (parameters become constants)."""
    closed = jax.make_jaxpr(fn)(x0)
    if len(closed.jaxpr.outvars) != 1:
        raise NotAChain(f"fn returns {len(closed.jaxpr.outvars)} arrays; it must return one")
    return _flatten(closed, jax.typeof(x0))


def analyse(program: Program) -> Chain:
    """The chain structure of `program`, or NotAChain naming the equation that stops it."""
    ops = program.ops
    dep = {0}
    for op in ops:
        if any(isinstance(v, int) and v in dep for v in op.ins):
            dep.update(op.outs)
    out = program.out
    if not isinstance(out, int) or out not in dep:
        raise NotAChain("the output does not depend on x")
    # Keep only x-dependent equations that reach the output (dead code does not count).
    live = {out}
    dep_ops = []
    for op in reversed(ops):
        if any(o in live for o in op.outs) and any(o in dep for o in op.outs):
            live.update(v for v in op.ins if isinstance(v, int))
            dep_ops.append(op)
    dep_ops.reverse()
    uses: dict[int, list[int]] = {}
    for k, op in enumerate(dep_ops):
        for v in op.ins:
            if isinstance(v, int) and v in dep:
                uses.setdefault(v, []).append(k)

    def shape(i):
        return tuple(program.avals[i].shape)

    linear, segments = [], []
    cur, block_ops, block_src = 0, [], 0
    while cur != out:
        users = uses.get(cur, [])
        if not users:
            raise NotAChain("a value on the path from x is unused (internal error)")
        first = dep_ops[users[0]]
        if len(users) == 1 and _linear_in(first, dep, cur):
            block_ops.append(first)
            cur = first.outs[0]
            continue
        # An elementwise segment: the equations reachable from `cur` through elementwise ops
        # of its shape whose x-dependent inputs all lie inside the segment.
        seg_shape = shape(cur)
        members: set[int] = set()
        seg_vars = {cur}
        grown = True
        while grown:
            grown = False
            for v in list(seg_vars):
                for k in uses.get(v, []):
                    op = dep_ops[k]
                    if k in members or not _elementwise_op(op, seg_shape):
                        continue
                    if all(not isinstance(a, int) or a not in dep or a in seg_vars for a in op.ins):
                        members.add(k)
                        seg_vars.update(op.outs)
                        grown = True
        exits = [v for v in seg_vars if v == out or any(k not in members for k in uses.get(v, []))]
        if not members or len(exits) != 1 or exits[0] == cur:
            outside = [k for v in seg_vars for k in uses.get(v, []) if k not in members]
            stopper = dep_ops[min(outside)] if outside else first
            if len(users) > 1 or len(exits) > 1:
                why = "x reaches it on two branches (skip connection or product of branches)"
            else:
                why = "not an affine map of x nor an elementwise function"
            raise _stop(stopper, why)
        linear.append(Block("linear", block_ops, block_src, cur, shape(block_src), shape(cur)))
        seg_ops = [dep_ops[k] for k in sorted(members)]
        (exit_,) = exits
        segments.append(Block("elementwise", seg_ops, cur, exit_, seg_shape, shape(exit_)))
        cur, block_ops, block_src = exit_, [], exit_
    linear.append(Block("linear", block_ops, block_src, cur, shape(block_src), shape(cur)))
    return Chain(program, linear, segments)


# ---------------------------------------------------------------------------------------------
# Evaluation of the pieces with the traced constants, so gradients reach the parameters.


def const_env(program: Program) -> dict[int, object]:
    """Every x-independent value of the program, evaluated once (per batch, outside any vmap)."""
    env = dict(program.consts)
    dep = {0}
    for op in program.ops:
        if any(isinstance(v, int) and v in dep for v in op.ins):
            dep.update(op.outs)
            continue
        vals = [v.value if isinstance(v, Lit) else env[v] for v in op.ins]
        for o, val in zip(op.outs, op.bind(vals), strict=True):
            env[o] = val
    return env


def run(ops: list[Op], env: dict, src: int, value, *, linear_part: bool = False):
    """Evaluates a block's equations from `value` at `src`; returns the block's last output.

    linear_part=True drops the affine offsets (biases, constant padding and concatenated
    constants), giving the linear map A with A(v) = block(v) − block(0).
    """
    local = {src: value}

    def read(v):
        if isinstance(v, Lit):
            return v.value
        return local[v] if v in local else env[v]

    last = value
    for op in ops:
        vals = [read(v) for v in op.ins]
        if linear_part:
            d = _dep_index(op)
            name = op.name
            if name in ("add", "add_any"):
                local[op.outs[0]] = last = vals[d]
                continue
            if name == "sub":
                local[op.outs[0]] = last = vals[0] if d == 0 else -vals[1]
                continue
            if name == "pad":
                vals[1] = jnp.zeros_like(vals[1])
            if name == "concatenate":
                vals = [v if i == d else jnp.zeros_like(v) for i, v in enumerate(vals)]
        outs = op.bind(vals)
        for o, val in zip(op.outs, outs, strict=True):
            local[o] = val
        last = outs[0]
    return last


def _dense_op(block: Block) -> Op | None:
    """The one dot_general of a block that is x ↦ x·W (+ b) against a 2-D constant W, or None."""
    core = [op for op in block.ops if op.name not in ("reshape", "convert_element_type", "copy")]
    core = [op for op in core if op.name not in ("add", "add_any")]
    if len(core) != 1 or core[0].name != "dot_general":
        return None
    op = core[0]
    d = _dep_index(op)
    (_, _), (lb, rb) = op.eqn.params["dimension_numbers"]
    if lb or rb or isinstance(op.ins[1 - d], Lit) or op.eqn.invars[d].aval.ndim != 1:
        return None
    return op if op.eqn.invars[1 - d].aval.ndim == 2 else None


def has_dense_matrix(block: Block) -> bool:
    return _dense_op(block) is not None


def dense_matrix(block: Block, env: dict):
    """[n_out, n_in] matrix of a block that is one dot_general against a 2-D constant, else None.

    Flattening reshapes and dtype casts around it keep the row-major order, so the matrix is the
    constant itself (or its transpose): no identity has to be pushed through the map.
    """
    op = _dense_op(block)
    if op is None:
        return None
    d = _dep_index(op)
    (lc, rc), _ = op.eqn.params["dimension_numbers"]
    w = env[op.ins[1 - d]]
    w_contract = (rc if d == 0 else lc)[0]
    return w.T if w_contract == 0 else w


def row_norms_propagate(block: Block) -> bool:
    """Whether `row_norms_sq` can propagate through the block (decided from the shapes)."""
    disjoint = True
    for op in block.ops:
        if op.name in ("dot_general", "conv_general_dilated", "reduce_sum"):
            if not disjoint:
                return False
            disjoint = op.name == "reduce_sum"
        elif op.name == "broadcast_in_dim":
            size_in = int(np.prod(op.eqn.invars[0].aval.shape))
            disjoint = disjoint and size_in == int(np.prod(op.eqn.outvars[0].aval.shape))
        elif op.name not in _SELECTING | SHAPE_LINEAR:
            return False
    return True


def row_norms_sq(block: Block, env: dict, in_shape, dtype) -> object | None:
    """Squared row norms of the block's linear map, in its output shape, or None.

    Propagated from the identity at x: while the rows have disjoint supports (the map only
    selects and scales entries), a dot_general or convolution maps squared row norms by the
    same operation with the squared constant, e.g. conv(ones, K²) for a convolution.
    """
    rn = jnp.ones(in_shape, dtype=dtype)
    disjoint = True
    rn_env: dict[int, object] = {block.src: rn}
    last = rn
    for op in block.ops:
        d = _dep_index(op)
        vals = [v.value if isinstance(v, Lit) else rn_env.get(v, env.get(v)) for v in op.ins]
        vals[d] = rn_env[op.ins[d]]
        name = op.name
        if name in ("dot_general", "conv_general_dilated"):
            if not disjoint:
                return None
            vals = [v if i == d else v * v for i, v in enumerate(vals)]
            new = op.bind(vals)[0]
            disjoint = False
        elif name in ("add", "add_any", "sub", "neg"):
            new = vals[d]
        elif name == "mul":
            new = vals[d] * vals[1 - d] ** 2
        elif name == "div":
            new = vals[0] / vals[1] ** 2
        elif name == "reduce_sum":
            if not disjoint:
                return None
            new = op.bind(vals)[0]
        elif name == "broadcast_in_dim":
            new = op.bind(vals)[0]
            disjoint = disjoint and new.size == vals[d].size
        elif name == "pad":
            new = op.bind([vals[0], jnp.zeros((), vals[0].dtype)])[0]
        elif name == "concatenate":
            new = op.bind([v if i == d else jnp.zeros_like(v) for i, v in enumerate(vals)])[0]
        elif name in _SELECTING or name in SHAPE_LINEAR:
            new = op.bind(vals)[0]
        else:
            return None
        rn_env[op.outs[0]] = last = new
    return last


def linear_macs(block: Block) -> int:
    """Multiply-adds of one application of the block's linear map (dot_general and conv)."""
    total = 0
    for op in block.ops:
        out = int(np.prod(op.eqn.outvars[0].aval.shape))
        if op.name == "dot_general":
            (lc, _), _ = op.eqn.params["dimension_numbers"]
            lhs = op.eqn.invars[0].aval.shape
            total += out * int(np.prod([lhs[i] for i in lc]))
        elif op.name == "conv_general_dilated":
            rhs = op.eqn.invars[1].aval.shape
            o = rhs[op.eqn.params["dimension_numbers"].rhs_spec[0]]
            total += out * int(np.prod(rhs)) // o
        else:
            total += out
    return total


def elementwise_macs(block: Block) -> int:
    return len(block.ops) * int(np.prod(block.in_shape))
