"""The interface every primitive rule gives: does it apply, its linear part, row norms,
multiply-adds and its name in `explain`. One subclass per primitive family, one module each."""

from __future__ import annotations

import numpy as np


def size(shape) -> int:
    return int(np.prod(shape))


def dims(shape) -> str:
    return "x".join(str(s) for s in shape if s != 1) or "1"


class Rule:
    """Defaults for a primitive that is affine in its one x-dependent operand `op.dep[0]`.

    `vals` below are the operands of one equation, the x-dependent one at `op.dep[0]`.
    """

    primitives: frozenset[str] = frozenset()

    def linear(self, op) -> bool:
        """Is the equation an affine map of its x-dependent operand?"""
        return True

    def isometric(self, op) -> bool:
        """Does its linear part only move entries (so it keeps ‖·‖_F)?"""
        return False

    def linear_part(self, op, vals: list):
        """The output of the equation's linear part A(v) = op(v) − op(0) at vals[op.dep[0]]."""
        return op.bind(vals)[0]

    def row_norms(self, op, vals: list, disjoint: bool):
        """(squared row norms after the equation, disjoint) from those of its input at
        vals[op.dep[0]] while the rows have disjoint supports (`disjoint`); None if unknown."""
        return None

    def pull(self, op, vals: list, rows):
        """rows · A for rows [R, *out] of the equation's linear part, [R, *in]; None: the
        caller pulls them back by autodiff (a rule gives this only where it is faster)."""
        return None

    def macs(self, op) -> int:
        """Multiply-adds of one application (default: one per output entry)."""
        return size(getattr(op.eqn.outvars[0].aval, "shape", ()))

    def label(self, op) -> str | None:
        """How `explain` names the equation inside a linear block (None: not named)."""
        return None
