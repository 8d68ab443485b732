"""Jacobian structure of a per-example function, read from its jaxpr (not from its class).

`trace(fn, x0)` flattens the jaxpr of `fn` at one example; `analyse` splits it into a chain
h = A_L ∘ D_L ∘ ⋯ ∘ D_1 ∘ A_0 of affine maps A_l and elementwise segments D_l, or says which
equation stops that; `peel` finds the leading affine map A_0 of any other function. What each
primitive is comes from its rule in `aecore.jacobian.rules`; nothing is guessed.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.extend as jex
import jax.numpy as jnp

from aecore.jacobian import rules
from aecore.jacobian.rules import elementwise

INLINED = elementwise.INLINED


@dataclasses.dataclass(frozen=True)
class Lit:
    """A literal operand of an equation."""

    value: object


@dataclasses.dataclass
class Op:
    """One flattened equation: ints name values, `Lit` holds literals."""

    eqn: jex.core.JaxprEqn
    ins: tuple
    outs: tuple[int, ...]
    where: str  # enclosing jit names, for `explain`
    dep: tuple[int, ...] = ()  # positions of the operands that depend on x

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
    consts: dict[int, Any]
    avals: dict[int, Any]
    out: int | Lit


def _flatten(closed, x_aval) -> Program:
    ids: dict[object, int | Lit] = {}
    avals: dict[int, object] = {}
    consts: dict[int, object] = {}
    ops: list[Op] = []
    dep = {0}  # values that depend on the example x (id 0)

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
            dep_pos = tuple(i for i, v in enumerate(ins) if isinstance(v, int) and v in dep)
            if dep_pos:
                dep.update(outs)
            ops.append(Op(eqn, ins, outs, where, dep_pos))

    jaxpr = closed.jaxpr
    x_var = jaxpr.invars[0]
    ids[x_var] = 0
    avals[0] = x_aval
    walk(jaxpr, closed.consts, [0], "")
    (out,) = jaxpr.outvars
    return Program(ops, consts, avals, read(out))


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
        return self.kind == "linear" and all(rules.linear_rule(op).isometric(op) for op in self.ops)

    def describe(self) -> str:
        if self.kind == "elementwise":
            return "+".join(dict.fromkeys(elementwise.label(op) for op in self.ops))
        labels = [rules.linear_rule(op).label(op) for op in self.ops]
        parts = [p for p in labels if p]
        return " · ".join(parts) or ("reshape" if self.isometric else "linear")


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


def trace(fn: Callable, x0) -> Program:
    """The flattened jaxpr of `fn` at one example `x0` (parameters become constants)."""
    closed = jax.make_jaxpr(fn)(x0)
    if len(closed.jaxpr.outvars) != 1:
        raise NotAChain(f"fn returns {len(closed.jaxpr.outvars)} arrays; it must return one")
    return _flatten(closed, jax.typeof(x0))


@dataclasses.dataclass
class Live:
    """The x-dependent equations that reach the output, in order, and who uses each value."""

    program: Program
    dep: set[int]
    ops: list[Op]
    uses: dict[int, list[int]]

    def shape(self, i: int) -> tuple[int, ...]:
        return tuple(self.program.avals[i].shape)

    def linear_from(self, cur: int) -> tuple[list[Op], int]:
        """The longest run of affine equations from `cur` along which each value has one user."""
        block_ops = []
        while cur != self.program.out:
            users = self.uses.get(cur, [])
            if len(users) != 1:
                break
            op = self.ops[users[0]]
            if not rules.is_linear(op) or op.ins[op.dep[0]] != cur:
                break
            block_ops.append(op)
            cur = op.outs[0]
        return block_ops, cur


def live(program: Program) -> Live:
    """Dead code and x-independent equations left out; NotAChain if the output ignores x."""
    dep = {0}
    for op in program.ops:
        if op.dep:
            dep.update(op.outs)
    out = program.out
    if not isinstance(out, int) or out not in dep:
        raise NotAChain("the output does not depend on x")
    reach = {out}
    dep_ops = []
    for op in reversed(program.ops):
        if any(o in reach for o in op.outs) and op.dep:
            reach.update(v for v in op.ins if isinstance(v, int))
            dep_ops.append(op)
    dep_ops.reverse()
    uses: dict[int, list[int]] = {}
    for k, op in enumerate(dep_ops):
        for i in op.dep:
            uses.setdefault(op.ins[i], []).append(k)
    return Live(program, dep, dep_ops, uses)


def _segment(lv: Live, cur: int) -> Block:
    """The elementwise segment from `cur`: the equations reachable from it through elementwise
    ops of its shape whose x-dependent inputs all lie inside; NotAChain if it has no single
    exit."""
    seg_shape = lv.shape(cur)
    members: set[int] = set()
    seg_vars = {cur}
    grown = True
    while grown:
        grown = False
        for v in list(seg_vars):
            for k in lv.uses.get(v, []):
                op = lv.ops[k]
                if k in members or not elementwise.is_elementwise(op, seg_shape):
                    continue
                if all(op.ins[i] in seg_vars for i in op.dep):
                    members.add(k)
                    seg_vars.update(op.outs)
                    grown = True
    out = lv.program.out
    exits = [v for v in seg_vars if v == out or any(k not in members for k in lv.uses.get(v, []))]
    if not members or len(exits) != 1 or exits[0] == cur:
        users = lv.uses.get(cur, [])
        outside = [k for v in seg_vars for k in lv.uses.get(v, []) if k not in members]
        stopper = lv.ops[min(outside)] if outside else lv.ops[users[0]]
        if len(users) > 1 or len(exits) > 1:
            why = "x reaches it on two branches (skip connection or product of branches)"
        else:
            why = "not an affine map of x nor an elementwise function"
        raise _stop(stopper, why)
    seg_ops = [lv.ops[k] for k in sorted(members)]
    (exit_,) = exits
    return Block("elementwise", seg_ops, cur, exit_, seg_shape, lv.shape(exit_))


def analyse(program: Program) -> Chain:
    """The chain structure of `program`, or NotAChain naming the equation that stops it."""
    lv = live(program)
    linear: list[Block] = []
    segments: list[Block] = []
    cur = 0
    while True:
        block_ops, end = lv.linear_from(cur)
        linear.append(Block("linear", block_ops, cur, end, lv.shape(cur), lv.shape(end)))
        if end == program.out:
            return Chain(program, linear, segments)
        if not lv.uses.get(end):
            raise NotAChain("a value on the path from x is unused (internal error)")
        segments.append(_segment(lv, end))
        cur = segments[-1].dst


@dataclasses.dataclass
class Peel:
    """fn = rest ∘ A_0: the affine map A_0 (`first`) all of x passes through, then anything."""

    program: Program
    first: Block
    rest: list[Op]

    def describe(self) -> str:
        return f"{self.first.describe()} | {describe_ops(self.rest, self.first.dst)}"


def _op_label(op: Op) -> str | None:
    rule = rules.rule_for(op)
    if rule is not None and type(rule) is not type(rules.elementwise.RULE):
        return rule.label(op)  # dense, conv; shape ops are not named
    if rule is not None and rule.linear(op) and len(op.dep) == 1:
        return None  # a bias, a constant scale
    return elementwise.label(op)


def cuts(ops: list[Op], start: int) -> list[int]:
    """Indices j after which the only x-dependent value still needed is ops[j]'s output."""
    last_use: dict[int, int] = {}
    for j, op in enumerate(ops):
        for i in op.dep:
            last_use[op.ins[i]] = j
    alive, cuts = {start}, []
    for j, op in enumerate(ops):
        alive = {v for v in alive if last_use.get(v, -1) > j} | set(op.outs)
        if len(op.outs) == 1 and alive == set(op.outs):
            cuts.append(j)
    return cuts


def labels_of(ops: list[Op]) -> str:
    labels: list[str] = []
    for op in ops:
        label = _op_label(op)
        if label and (not labels or labels[-1] != label):  # gelu's equations say it once
            labels.append(label)
    return " · ".join(labels)


def describe_part(ops: list[Op], start: int) -> str:
    """A part between two cuts that branches: named by how its branches meet (residual,
    gating, concat) or by what it computes (a normalisation)."""
    names = {op.name for op in ops}
    reductions = sum(op.name == "reduce_sum" for op in ops)
    last, inner = ops[-1], ops[:-1]
    dep_ins = [last.ins[i] for i in last.dep]
    skip = last.name in ("add", "add_any", "sub") and start in dep_ins and len(dep_ins) == 2
    if skip and reductions and all(rules.is_linear(op) for op in inner):
        return "centre"  # h − mean(h), the first half of a LayerNorm written out
    if skip:
        return f"residual[{describe_ops(inner, start, ' · ') if inner else 'identity'}]"
    if reductions and not names & {"dot_general", "conv_general_dilated"}:
        if not names & {"rsqrt", "sqrt", "pow"}:
            return "centre"
        return "layer_norm" if reductions >= 2 else "rms_norm"
    kind = {"mul": "gating", "concatenate": "concat"}.get(last.name, "block")
    return f"{kind}[{labels_of(ops)}]"


def between_cuts(ops: list[Op], start: int):
    """(equations, source value) of each part between two cuts, in order, from `start`."""
    begin, src = 0, start
    for j in [*cuts(ops, start), len(ops) - 1]:
        if j < begin:
            continue
        yield ops[begin : j + 1], src
        begin, src = j + 1, ops[j].outs[0]


def describe_ops(ops: list[Op], start: int, sep: str = " | ") -> str:
    """The block structure of x-dependent equations from the value `start`, e.g.
    "residual[layer_norm · dense 512→512 · gelu] ×2 | dense 512→64 · tanh": runs of
    equations with one x-dependent operand are paths, the rest parts between cuts."""
    parts: list[list] = []  # ["path", labels] or [name]
    for part, src in between_cuts(ops, start):
        shape = tuple(getattr(program_aval(part[0], src), "shape", ()))
        if all(len(op.dep) == 1 for op in part):
            labels = [labels_of(part)] if labels_of(part) else []
        elif all(elementwise.is_elementwise(op, shape) for op in part):  # gelu, swish
            labels = ["+".join(dict.fromkeys(elementwise.label(op) for op in part))]
        else:
            labels = None
        if labels is None:
            parts.append([describe_part(part, src)])
        elif parts and parts[-1][0] == "path":
            parts[-1][1].extend(labels)
        else:
            parts.append(["path", labels])
    return sep.join(
        merge_repeats([" · ".join(p[1]) or "reshape" if p[0] == "path" else p[0] for p in parts])
    )


def program_aval(op: Op, value: int):
    """The abstract value of `value` where `op` reads it."""
    return next(v.aval for v, i in zip(op.eqn.invars, op.ins, strict=True) if i == value)


def merge_repeats(names: list[str]) -> list[str]:
    """A written-out LayerNorm (centre, then rms_norm) as one name; repeated blocks as ×n."""
    merged: list[list] = []
    for name in names:
        if merged and merged[-1] == ["centre", 1] and name == "rms_norm":
            merged[-1][0] = "layer_norm"
        elif merged and merged[-1][0] == name and name.startswith(("residual", "gating", "block")):
            merged[-1][1] += 1
        else:
            merged.append([name, 1])
    return [n if k == 1 else f"{n} ×{k}" for n, k in merged]


def peel(program: Program) -> Peel | None:
    """The leading affine map of `program` and the equations after it, or None if x does not
    first pass through one (or nothing follows it)."""
    try:
        lv = live(program)
    except NotAChain:
        return None
    block_ops, end = lv.linear_from(0)
    first = Block("linear", block_ops, 0, end, lv.shape(0), lv.shape(end))
    if end == program.out or not block_ops or first.isometric:
        return None
    return Peel(program, first, lv.ops[len(block_ops) :])


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


def run(ops: list[Op], env: dict, src: int, value, *, linear_part: bool = False, dst=None):
    """Evaluates a block's equations from `value` at `src`; returns the value `dst` (default:
    the last equation's first output).

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
            local[op.outs[0]] = last = rules.linear_rule(op).linear_part(op, vals)
            continue
        outs = op.bind(vals)
        for o, val in zip(op.outs, outs, strict=True):
            local[o] = val
        last = outs[0]
    return last if dst is None else local[dst]


def _dense_op(block: Block) -> Op | None:
    """The one dot_general of a block that is x ↦ x·W (+ b) against a 2-D constant W, or None."""
    core = [op for op in block.ops if op.name not in ("reshape", "convert_element_type", "copy")]
    core = [op for op in core if op.name not in ("add", "add_any")]
    if len(core) != 1 or core[0].name != "dot_general":
        return None
    return core[0] if rules.dense.RULE.has_matrix(core[0]) else None


def has_dense_matrix(block: Block) -> bool:
    return _dense_op(block) is not None


def dense_matrix(block: Block, env: dict):
    """[n_out, n_in] matrix of a block that is one dot_general against a 2-D constant, else None."""
    op = _dense_op(block)
    return None if op is None else rules.dense.RULE.matrix(op, env)


def row_norms_sq(block: Block, env: dict, in_shape, dtype) -> jax.Array | None:
    """Squared row norms of the block's linear map, in its output shape, or None.

    Propagated from the identity at x: while the rows have disjoint supports (the map only
    selects and scales entries), a dot_general or convolution maps squared row norms by the
    same operation with the squared constant, e.g. conv(ones, K²) for a convolution.
    """
    last = jnp.ones(in_shape, dtype=dtype)
    disjoint = True
    rn_env: dict[int, object] = {block.src: last}
    for op in block.ops:
        vals = [v.value if isinstance(v, Lit) else rn_env.get(v, env.get(v)) for v in op.ins]
        step = rules.linear_rule(op).row_norms(op, vals, disjoint)
        if step is None:
            return None
        last, disjoint = step
        rn_env[op.outs[0]] = last
    return last


def row_norms_propagate(block: Block, avals: dict) -> bool:
    """Whether `row_norms_sq` can propagate through the block (decided from the shapes alone:
    the rules run on zeros of the constants' shapes, abstractly)."""

    def probe():
        env = {
            v: jnp.zeros(avals[v].shape, avals[v].dtype)
            for op in block.ops
            for v in op.ins
            if isinstance(v, int) and v != block.src
        }
        return row_norms_sq(block, env, block.in_shape, avals[block.src].dtype)

    return jax.eval_shape(probe) is not None


def linear_macs(block: Block) -> int:
    """Multiply-adds of one application of the block's linear map."""
    return sum(rules.macs(op) for op in block.ops)
