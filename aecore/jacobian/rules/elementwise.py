"""Entry-by-entry primitives: members of elementwise segments (diagonal Jacobians, read by a
jvp, never looked up) and, when the other operand is constant, affine maps (+ b, · c, / c)."""

from __future__ import annotations

import jax
import jax.extend as jex
import jax.numpy as jnp

from aecore.jacobian.rules.base import Rule

# With operands of one shape (or scalars) their Jacobian is diagonal.
ELEMENTWISE = frozenset(
    """abs acos acosh add add_any and asin asinh atan atan2 atanh cbrt ceil clamp
    convert_element_type copy copy_p cos cosh digamma div eq erf erf_inv erfc exp exp2 expm1
    floor ge gt integer_pow is_finite le lgamma log log1p logistic lt max min mul ne neg not or pow
    reduce_precision rem round rsqrt select_n sign sin sinh sqrt square sub tan tanh xor""".split()
)
# Calls whose body is another jaxpr: inlined (jit) or checked to be elementwise (custom rules).
INLINED = frozenset({"jit", "pjit", "closed_call", "core_call", "remat", "checkpoint"})
CUSTOM = frozenset({"custom_jvp_call", "custom_vjp_call", "custom_vjp_call_jaxpr"})


class Affine(Rule):
    """x + c, x − c, c − x, −x, x·c, x / c: the entry-by-entry maps that are affine in x."""

    primitives = frozenset({"add", "add_any", "sub", "neg", "mul", "div"})

    def linear(self, op) -> bool:
        return op.name != "div" or op.dep[0] == 0

    def linear_part(self, op, vals):
        d = op.dep[0]
        if op.name in ("add", "add_any"):
            return vals[d]
        if op.name == "sub":
            return vals[0] if d == 0 else -vals[1]
        return op.bind(vals)[0]

    def row_norms(self, op, vals, disjoint):
        d = op.dep[0]
        if op.name == "mul":
            return vals[d] * vals[1 - d] ** 2, disjoint
        if op.name == "div":
            return vals[0] / vals[1] ** 2, disjoint
        return vals[d], disjoint


RULE = Affine()


def _body(op):
    inner = op.eqn.params.get("call_jaxpr", op.eqn.params.get("fun_jaxpr"))
    if inner is None:
        inner = op.eqn.params.get("jaxpr")
    return getattr(inner, "jaxpr", inner)


def is_elementwise_jaxpr(jaxpr, shape) -> bool:
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
            if inner is None or not is_elementwise_jaxpr(getattr(inner, "jaxpr", inner), shape):
                return False
        elif name not in ELEMENTWISE:
            return False
        for v in (*eqn.invars, *eqn.outvars):
            if getattr(v.aval, "shape", None) not in (shape, ()):
                return False
    return True


def is_elementwise(op, shape) -> bool:
    """Does the equation act entry by entry on arrays of `shape` (custom rules included)?"""
    if len(op.outs) != 1 or op.eqn.outvars[0].aval.shape != shape:
        return False
    for v in op.eqn.invars:
        if getattr(v.aval, "shape", None) not in (shape, ()):
            return False
    if op.name in CUSTOM:
        body = _body(op)
        if body is None or not is_elementwise_jaxpr(body, shape):
            return False
        return _custom_rule_is_elementwise(op, shape)
    return op.name in ELEMENTWISE


def _custom_rule_is_elementwise(op, shape) -> bool:
    """The custom derivative rule itself must act entry by entry: its jvp is traced and checked,
    since the segment's diagonal is read from that rule (a mixing rule would be misread)."""
    avals = [v.aval for v in op.eqn.invars]
    if not all(jnp.issubdtype(a.dtype, jnp.floating) for a in avals):
        return False
    primals = [jnp.zeros(a.shape, a.dtype) for a in avals]
    try:
        jvp = jax.make_jaxpr(lambda p, t: jax.jvp(lambda *a: op.bind(list(a))[0], p, t))
        return is_elementwise_jaxpr(jvp(primals, primals).jaxpr, shape)
    except Exception:  # noqa: BLE001 - a rule that cannot be traced alone is not trusted
        return False


def label(op) -> str:
    """How `explain` names an elementwise equation: its jit name (jax.nn.gelu → "gelu"), a
    custom rule's inner name, else the primitive."""
    label = op.where.strip("/").split("/")[0] if op.where else ""
    if op.name in CUSTOM and not label:
        eqns = getattr(_body(op), "eqns", [])
        names = [e.params.get("name") for e in eqns if "name" in e.params]
        label = str(names[0]) if names else ""
    return label or op.name
