"""The registry of primitive rules, the engine's only dispatch on primitive names.

One module per family (dense, conv, shape, elementwise); each rule says whether an equation is
an affine map of x, its linear part, how squared row norms pass through it, its multiply-adds
and its name in `explain` (`base.Rule`). A primitive no rule covers is not a linear map: the
analysis stops there and that part falls back to autodiff. Adding a family = one module here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from aecore.jacobian.rules import conv, dense, elementwise, shape
from aecore.jacobian.rules.base import Rule, size

if TYPE_CHECKING:
    from aecore.jacobian.trace import Op

RULES: tuple[Rule, ...] = (dense.RULE, conv.RULE, shape.RULE, elementwise.RULE)
_BY_NAME = {name: rule for rule in RULES for name in rule.primitives}


def rule_for(op: Op) -> Rule | None:
    """The rule of the equation's primitive, or None where no rule covers it."""
    return _BY_NAME.get(op.name)


def linear_rule(op: Op) -> Rule:
    """The rule of an equation already found affine (`is_linear`), which always has one."""
    rule = rule_for(op)
    if rule is None:
        raise LookupError(f"no rule for {op.name}, yet it was taken for a linear map")
    return rule


def is_linear(op: Op) -> bool:
    """Is the equation an affine map of its one x-dependent operand?"""
    rule = rule_for(op)
    return rule is not None and len(op.dep) == 1 and len(op.outs) == 1 and rule.linear(op)


def macs(op: Op) -> int:
    """Multiply-adds of one evaluation of any equation (one per output entry if no rule)."""
    rule = rule_for(op)
    if rule is not None:
        return rule.macs(op)
    return size(getattr(op.eqn.outvars[0].aval, "shape", ())) if op.eqn.outvars else 0


__all__ = [
    "RULES",
    "Rule",
    "conv",
    "dense",
    "elementwise",
    "is_linear",
    "linear_rule",
    "macs",
    "rule_for",
]
